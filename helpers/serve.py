"""A continuous-batching engine with a paged KV cache, from scratch: what serving engines (vLLM and others)
are built on, small enough to read in one sitting.

- ``PagedKVCache``: keys and values live in a pool of fixed-size **blocks** (``block_size`` positions each);
  every sequence has a **block table**, the list of its blocks in order, and takes a new block only when it
  fills the last one. Memory then follows the tokens actually held (at most one partly filled block per
  sequence), not the longest request a static batch must make room for.
- ``Engine``: a scheduler that, before every step, admits waiting requests (first come, first served) while
  a batch slot and enough free blocks are there, runs each new request's prompt (prefill), then one decode
  step for every running request at once, and retires the requests that are done, freeing their blocks.
  Greedy or sampled decoding (a temperature, top-k and seed per request, each request drawing from its own
  generator); each request gets exactly the tokens it gets alone with ``FastGPT2`` (tested).

    engine = Engine(model, max_batch=8, n_blocks=256, block_size=16)  # step="auto": a CUDA graph on a GPU
    finished = engine.run([Request(prompt_ids, max_new_tokens=64, arrival=0), ...])
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .fastgen.generator import pick_tokens
from .fastgen.model import Decoder


@dataclass
class Request:
    """One generation request: prompt token ids (1-D), how many new tokens, and the step it arrives at."""

    prompt: torch.Tensor
    max_new_tokens: int
    arrival: int = 0  # the engine step at which it is submitted
    arrival_s: float = 0.0  # and the second after the run's start (a stream arriving over time); both must pass
    temperature: float = 0.0  # 0: greedy; above 0: sampled (as FastGPT2.generate's temperature)
    top_k: int | None = None  # sample among the top_k most likely tokens only
    seed: int | None = None  # the seed of this request's own generator (None: a fresh random seed)
    tokens: list[int] = field(default_factory=list)  # the new tokens, filled in by the engine
    first_token_s: float | None = None  # seconds from the run's start to its first new token
    done_s: float | None = None  # seconds from the run's start to its last new token
    admitted_step: int | None = None


class PagedKVCache:
    """Keys and values of many sequences in one pool of blocks, each sequence with its own block table.

    One block more than ``n_blocks`` is allocated: the **scratch block** (``scratch``), never handed out. The
    empty rows of a fixed-shape step (``Engine``'s ``step="fixed"`` or ``"graph"``) point there, so they write
    and read harmlessly without a branch.
    """

    def __init__(self, n_layer: int, n_head: int, head_dim: int, n_blocks: int, block_size: int, dtype, device):
        shape = (n_layer, n_blocks + 1, n_head, block_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (layers, blocks + scratch, H, block_size, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size, self.scratch = block_size, n_blocks
        self.free = list(range(n_blocks - 1, -1, -1))  # a stack: the next block to hand out is free[-1]
        self.tables: dict[int, list[int]] = {}  # sequence id -> its blocks, in order
        self.lengths: dict[int, int] = {}  # sequence id -> positions held

    def blocks_for(self, n_tokens: int) -> int:
        return math.ceil(n_tokens / self.block_size)

    def reserve(self, seq: int, n_tokens: int) -> None:
        """Make room for ``n_tokens`` positions of ``seq`` in all (taking blocks from the pool as needed)."""
        table = self.tables.setdefault(seq, [])
        need = self.blocks_for(n_tokens) - len(table)
        if need > len(self.free):
            raise RuntimeError(f"the KV cache pool is out of blocks ({need} needed, {len(self.free)} free)")
        table.extend(self.free.pop() for _ in range(max(need, 0)))

    def release(self, seq: int) -> None:
        self.free.extend(reversed(self.tables.pop(seq, [])))
        self.lengths.pop(seq, None)

    def table_rows(self, seqs: list[int | None], width: int) -> torch.Tensor:
        """The block tables of ``seqs`` as one (B, width) tensor on the CPU, filled up with the scratch block
        (``None``: an empty row, all scratch)."""
        rows = [self.tables[s] if s is not None else [] for s in seqs]
        return torch.tensor([t + [self.scratch] * (width - len(t)) for t in rows])  # (B, width)

    def write(self, layer: int, table: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keys and values ``k``, ``v`` (B, H, T, D) at positions ``pos`` (B, T) of the sequences whose block
        tables are the rows of ``table`` (B, W): position p goes to block ``table[b, p // block_size]``, at
        offset ``p % block_size`` in it. All on the device: nothing waits for the CPU."""
        blocks = table.gather(1, pos // self.block_size)  # (B, T): the block each new position goes to
        offsets = pos % self.block_size  # (B, T): where in that block
        self.k[layer, blocks, :, offsets] = k.transpose(1, 2)  # (B, T, H, D) into (B, T) places of (H, D)
        self.v[layer, blocks, :, offsets] = v.transpose(1, 2)

    def gather(self, layer: int, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of the blocks in ``table`` (B, W), in order, as one tensor each: (B, H, W *
        block_size, D). Positions a sequence has not written are masked by the attention mask."""
        k, v = self.k[layer, table], self.v[layer, table]  # (B, W, H, block_size, D)
        b, n, h, bs, d = k.shape
        return (z.permute(0, 2, 1, 3, 4).reshape(b, h, n * bs, d) for z in (k, v))

    def held(self) -> int:
        """Positions held by all sequences (what the blocks in use are for)."""
        return sum(self.lengths.values())

    def in_use(self) -> int:
        """Positions the blocks in use could hold."""
        return sum(len(t) for t in self.tables.values()) * self.block_size


class LayerView:
    """One layer of a ``PagedKVCache`` for a batch of sequences (their block tables ``table``, (B, W)), with a
    static ``KVCache``'s ``update``, so that the decoder's ``Block`` reads and writes the paged cache unchanged."""

    def __init__(self, cache: PagedKVCache, layer: int, table: torch.Tensor):
        self.cache, self.layer, self.table = cache, layer, table

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` (B, H, T, D) at positions ``pos`` (B, T); return every sequence's cache (B, H, L, D)."""
        self.cache.write(self.layer, self.table, pos, k, v)
        return self.cache.gather(self.layer, self.table)


STEPS = ("dynamic", "fixed", "graph")


class Engine:
    """Continuous batching over a paged KV cache for a ``GPT2LMHeadModel`` (its weights copied).

    ``step``: how a decode step runs. ``"dynamic"``: the running requests only, their tables as wide as the
    longest (the fewest bytes; shapes change every step). ``"fixed"``: always ``max_batch`` rows (empty slots
    point at the scratch block) and tables as wide as ``max_len`` positions (the longest request it takes,
    prompt and answer; the model's positions by default), so every step has the same shapes.
    ``"graph"`` (GPU): the fixed step captured once in a CUDA graph and replayed, the greedy choice included,
    so a step costs one launch instead of one per operation. ``"auto"``: ``"graph"`` on a GPU, ``"dynamic"``
    on a CPU.
    """

    def __init__(
        self,
        model,
        *,
        max_batch: int = 8,
        n_blocks: int = 256,
        block_size: int = 16,
        max_len: int | None = None,
        dtype=None,
        step="auto",
    ):
        cfg = model.config
        device = next(model.parameters()).device
        if step == "auto":
            step = "graph" if device.type == "cuda" else "dynamic"
        if step not in STEPS:
            raise ValueError(f"step takes 'auto' or one of {STEPS}, got {step!r}.")
        if step == "graph" and device.type != "cuda":
            raise ValueError("step='graph' captures a CUDA graph: it needs a model on a GPU (use 'fixed' here).")
        self.max_len = max_len or cfg.n_positions
        if not 1 <= self.max_len <= cfg.n_positions:
            raise ValueError(f"max_len takes 1 to the model's {cfg.n_positions} positions, got {max_len}.")
        self.dtype = dtype or next(model.parameters()).dtype
        self.model = Decoder(model, self.dtype)
        self.config, self.device, self.max_batch, self.step = cfg, device, max_batch, step
        self.cache = PagedKVCache(
            cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, n_blocks, block_size, self.dtype, device
        )
        self.width = self.cache.blocks_for(self.max_len)  # table width of a fixed step: the longest request
        self.slots: list[int | None] = [None] * max_batch  # fixed steps: which request each row serves
        self.graph = None  # the captured step (step="graph"), made on the first decode step
        self.waste: list[float] = []  # per step: the share of positions in used blocks that hold nothing
        self.reserved_waste: list[float] = []  # the same, counting the blocks set aside for unwritten answers
        self.generators: dict[int, torch.Generator] = {}  # request -> its own generator (sampled requests)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) after tokens (B, T) at positions (B, T) of the sequences whose block tables are the
        rows of ``table`` (B, W), writing their cache. Every input is on the device, so this can be captured.

        The decoder's own blocks run it (``fastgen.model.Block``); each reads and writes the paged cache through
        a ``LayerView``, which has the ``update`` of a static ``KVCache``.
        """
        m = self.model
        x = m.embed(tokens) + m.wpe(pos)  # (B, T, C)
        keys = torch.arange(table.shape[1] * self.cache.block_size, device=tokens.device)  # (L,)
        mask = (keys[None, None, :] <= pos[:, :, None]).unsqueeze(1)  # (B, 1, T, L): causal, this sequence only
        for i, blk in enumerate(m.blocks):
            blk.cache = LayerView(self.cache, i, table)
            x = blk(x, pos, mask)  # (B, T, C)
        return m.head(m.ln_f(x[:, -1])).float()  # (B, V)

    def _check(self, r: Request) -> None:
        n = r.prompt.numel() + r.max_new_tokens
        if r.prompt.dim() != 1 or r.prompt.numel() < 1 or r.max_new_tokens < 1:
            raise ValueError("a Request needs a 1-D prompt of at least one token and max_new_tokens >= 1.")
        if not math.isfinite(r.temperature) or r.temperature < 0 or (r.top_k is not None and r.top_k < 1):
            raise ValueError(f"temperature must be finite and >= 0, top_k >= 1; got {r.temperature}, {r.top_k}.")
        if r.arrival < 0 or not math.isfinite(r.arrival_s) or r.arrival_s < 0:  # one never reached would hang the run
            raise ValueError(f"arrival must be >= 0 and arrival_s finite and >= 0; got {r.arrival}, {r.arrival_s}.")
        if n > self.max_len:
            raise ValueError(
                f"prompt + new tokens ({n}) exceed the engine's {self.max_len} positions (max_len; the model has "
                f"{self.config.n_positions}): shorten the request or give Engine a larger max_len."
            )
        if self.cache.blocks_for(n) > len(self.cache.free) + sum(len(t) for t in self.cache.tables.values()):
            raise ValueError(
                f"one request needs {self.cache.blocks_for(n)} blocks; the pool has fewer: "
                "give Engine a larger n_blocks."
            )

    @torch.no_grad()
    def run(self, requests: list[Request]) -> list[Request]:
        """Serve ``requests`` (each arriving at its ``arrival`` step and ``arrival_s`` second); return them with their
        tokens and times. With nothing to run, the engine waits for the next arrival."""
        for r in requests:
            self._check(r)
        waiting = sorted(range(len(requests)), key=lambda i: (requests[i].arrival, requests[i].arrival_s, i))
        running: list[int] = []
        reserved: dict[int, int] = {}  # blocks each running request may still take
        self.slots = [None] * self.max_batch
        step, start = 0, time.perf_counter()
        while waiting or running:
            # admit, first come first served, while a slot and the blocks it may need are free
            if not running and waiting:  # idle: sleep until the next request arrives
                time.sleep(max(0.0, requests[waiting[0]].arrival_s - (time.perf_counter() - start)))
            while waiting and self._arrived(requests[waiting[0]], step, start) and len(running) < self.max_batch:
                r = requests[waiting[0]]
                need = self.cache.blocks_for(r.prompt.numel() + r.max_new_tokens)
                if need > len(self.cache.free) - sum(reserved.values()):
                    break
                i = waiting.pop(0)
                reserved[i] = need
                r.admitted_step = step
                self.slots[self.slots.index(None)] = i
                self._prefill(i, r, start)
                reserved[i] -= len(self.cache.tables[i])
                running.append(i)
            if running:
                self._decode(running, requests, reserved, start)
                for i in [i for i in running if len(requests[i].tokens) >= requests[i].max_new_tokens]:
                    running.remove(i)
                    reserved.pop(i)
                    self.slots[self.slots.index(i)] = None
                    self.generators.pop(i, None)
                    self.cache.release(i)
            step += 1
        return requests

    @staticmethod
    def _arrived(r: Request, step: int, start: float) -> bool:
        return r.arrival <= step and r.arrival_s <= time.perf_counter() - start

    def _prefill(self, i: int, r: Request, start: float) -> None:
        """Run request ``i``'s prompt (its own forward pass, eager) and choose its first token."""
        n = r.prompt.numel()
        self.cache.reserve(i, n)
        pos = torch.arange(n, device=self.device)[None]  # (1, T)
        table = self.cache.table_rows([i], len(self.cache.tables[i])).to(self.device)  # (1, W)
        logits = self.forward(r.prompt.to(self.device)[None], pos, table)
        self.cache.lengths[i] = n
        if r.temperature > 0:  # seeded as FastGPT2 seeds its generator, so a request alone draws the same tokens
            self.generators[i] = torch.Generator(device=self.device)
            self.generators[i].manual_seed(torch.seed() if r.seed is None else r.seed)
        r.tokens = [self._pick(i, r, logits)]
        r.first_token_s = time.perf_counter() - start
        if len(r.tokens) >= r.max_new_tokens:
            r.done_s = r.first_token_s

    def _pick(self, i: int, r: Request, logits: torch.Tensor) -> int:
        """Request ``i``'s next token from its logits (1, V): greedy, or drawn with its own generator."""
        return int(pick_tokens(logits, r.temperature, r.top_k, self.generators.get(i))[0])

    def _decode(self, running: list[int], requests: list[Request], reserved: dict[int, int], start: float) -> None:
        """One decode step for every running request that still wants tokens."""
        active = [i for i in running if len(requests[i].tokens) < requests[i].max_new_tokens]
        if not active:
            return
        for i in active:  # room for the position this step writes
            before = len(self.cache.tables[i])
            self.cache.reserve(i, self.cache.lengths[i] + 1)
            reserved[i] -= len(self.cache.tables[i]) - before
        if self.step == "dynamic":  # the active requests only, tables as wide as the longest
            rows, width = active, max(len(self.cache.tables[i]) for i in active)
        else:  # every slot, tables as wide as max_len: the same shapes at every step
            rows, width = [i if i in active else None for i in self.slots], self.width
        tokens = torch.tensor([[requests[i].tokens[-1] if i is not None else 0] for i in rows])  # (B, 1)
        pos = torch.tensor([[self.cache.lengths[i] if i is not None else 0] for i in rows])  # (B, 1)
        logits, greedy = self._step(tokens, pos, self.cache.table_rows(rows, width))
        greedy = greedy.tolist()  # the one wait for the device in a greedy step
        now = time.perf_counter() - start
        for row, i in enumerate(rows):
            if i is None:
                continue
            r = requests[i]
            self.cache.lengths[i] += 1
            r.tokens.append(greedy[row] if r.temperature == 0 else self._pick(i, r, logits[row : row + 1]))
            if len(r.tokens) >= r.max_new_tokens:
                r.done_s = now
        held, in_use = self.cache.held(), self.cache.in_use()
        set_aside = self.cache.block_size * sum(reserved.values())  # positions promised to answers not yet written
        self.waste.append(1 - held / max(in_use, 1))
        self.reserved_waste.append(1 - held / max(in_use + set_aside, 1))

    def _step(self, tokens: torch.Tensor, pos: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, V) and greedy tokens (B,) of one decode step: eager, or a replay of the captured graph after
        copying this step's tokens (B, 1), positions (B, 1) and block tables (B, W) into its input tensors."""
        if self.step != "graph":
            logits = self.forward(tokens.to(self.device), pos.to(self.device), table.to(self.device))
            return logits, logits.argmax(-1)
        if self.graph is None:
            self._capture(tokens.shape[0], table.shape[1])
        for static, new in zip(self.inputs, (tokens, pos, table), strict=True):
            static.copy_(new)
        self.graph.replay()
        return self.logits, self.greedy

    def _capture(self, batch: int, width: int) -> None:
        """Record one fixed-shape decode step in a CUDA graph (notebook 05's graphs): every slot empty, so the
        warm-up and the recording write only the scratch block."""
        self.inputs = [torch.zeros(batch, 1, dtype=torch.long, device=self.device) for _ in range(2)]
        self.inputs.append(torch.full((batch, width), self.cache.scratch, dtype=torch.long, device=self.device))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the main stream, as capturing wants
            for _ in range(2):
                self.forward(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.forward(*self.inputs)  # (B, V)
            self.greedy = self.logits.argmax(-1)  # (B,)
