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

    engine = Engine(model, max_batch=8, n_blocks=256, block_size=16)
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
    temperature: float = 0.0  # 0: greedy; above 0: sampled (as FastGPT2.generate's temperature)
    top_k: int | None = None  # sample among the top_k most likely tokens only
    seed: int | None = None  # the seed of this request's own generator (None: a fresh random seed)
    tokens: list[int] = field(default_factory=list)  # the new tokens, filled in by the engine
    first_token_s: float | None = None  # seconds from the run's start to its first new token
    done_s: float | None = None  # seconds from the run's start to its last new token
    admitted_step: int | None = None


class PagedKVCache:
    """Keys and values of many sequences in one pool of blocks, each sequence with its own block table."""

    def __init__(self, n_layer: int, n_head: int, head_dim: int, n_blocks: int, block_size: int, dtype, device):
        shape = (n_layer, n_blocks, n_head, block_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (layers, blocks, H, block_size, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
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

    def write(self, layer: int, seqs: list[int], pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keys and values ``k``, ``v`` (B, H, T, D) of sequences ``seqs`` at positions ``pos`` (B, T)."""
        tables = [self.tables[s] for s in seqs]
        blocks = torch.tensor(
            [[t[p // self.block_size] for p in row] for t, row in zip(tables, pos.tolist(), strict=True)]
        )
        offsets = pos.cpu() % self.block_size  # (B, T)
        b_idx, o_idx = blocks.flatten().to(k.device), offsets.flatten().to(k.device)
        self.k[layer, b_idx, :, o_idx] = k.permute(0, 2, 1, 3).reshape(-1, k.shape[1], k.shape[3])  # (B*T, H, D)
        self.v[layer, b_idx, :, o_idx] = v.permute(0, 2, 1, 3).reshape(-1, v.shape[1], v.shape[3])

    def gather(self, layer: int, seqs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sequence's keys and values, its blocks in order, padded to the longest: (B, H, L, D) each."""
        width = max(len(self.tables[s]) for s in seqs)
        idx = torch.tensor([self.tables[s] + [0] * (width - len(self.tables[s])) for s in seqs], device=self.k.device)
        k, v = self.k[layer, idx], self.v[layer, idx]  # (B, blocks, H, block_size, D)
        b, n, h, bs, d = k.shape
        return (z.permute(0, 2, 1, 3, 4).reshape(b, h, n * bs, d) for z in (k, v))

    def held(self) -> int:
        """Positions held by all sequences (what the blocks in use are for)."""
        return sum(self.lengths.values())

    def in_use(self) -> int:
        """Positions the blocks in use could hold."""
        return sum(len(t) for t in self.tables.values()) * self.block_size


class LayerView:
    """One layer of a ``PagedKVCache`` for a batch of sequences, with a static ``KVCache``'s ``update``, so that
    the decoder's ``Block`` reads and writes the paged cache unchanged."""

    def __init__(self, cache: PagedKVCache, layer: int, seqs: list[int]):
        self.cache, self.layer, self.seqs = cache, layer, seqs

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` (B, H, T, D) at positions ``pos`` (B, T); return every sequence's cache (B, H, L, D)."""
        self.cache.write(self.layer, self.seqs, pos, k, v)
        return self.cache.gather(self.layer, self.seqs)


class Engine:
    """Continuous batching over a paged KV cache for a ``GPT2LMHeadModel`` (its weights copied, greedy)."""

    def __init__(self, model, *, max_batch: int = 8, n_blocks: int = 256, block_size: int = 16, dtype=None):
        cfg = model.config
        device = next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        self.model = Decoder(model, self.dtype)
        self.config, self.device, self.max_batch = cfg, device, max_batch
        self.cache = PagedKVCache(
            cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, n_blocks, block_size, self.dtype, device
        )
        self.waste: list[float] = []  # per step: the share of positions in used blocks that hold nothing
        self.generators: dict[int, torch.Generator] = {}  # request -> its own generator (sampled requests)

    @torch.no_grad()
    def forward(self, seqs: list[int], tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) after tokens (B, T) at positions (B, T) of sequences ``seqs``, writing their cache.

        The decoder's own blocks run it (``fastgen.model.Block``); each reads and writes the paged cache through
        a ``LayerView``, which has the ``update`` of a static ``KVCache``.
        """
        m = self.model
        x = m.embed(tokens) + m.wpe(pos)  # (B, T, C)
        width = max(len(self.cache.tables[s]) for s in seqs) * self.cache.block_size  # L: the gathered length
        keys = torch.arange(width, device=self.device)
        mask = (keys[None, None, :] <= pos[:, :, None]).unsqueeze(1)  # (B, 1, T, L): causal, this sequence only
        for i, blk in enumerate(m.blocks):
            blk.cache = LayerView(self.cache, i, seqs)
            x = blk(x, pos, mask)  # (B, T, C)
        return m.head(m.ln_f(x[:, -1])).float()  # (B, V)

    def _check(self, r: Request) -> None:
        n = r.prompt.numel() + r.max_new_tokens
        if r.prompt.dim() != 1 or r.prompt.numel() < 1 or r.max_new_tokens < 1:
            raise ValueError("a Request needs a 1-D prompt of at least one token and max_new_tokens >= 1.")
        if not math.isfinite(r.temperature) or r.temperature < 0 or (r.top_k is not None and r.top_k < 1):
            raise ValueError(f"temperature must be finite and >= 0, top_k >= 1; got {r.temperature}, {r.top_k}.")
        if n > self.config.n_positions:
            raise ValueError(f"prompt + new tokens ({n}) exceed the model's {self.config.n_positions} positions.")
        if self.cache.blocks_for(n) > len(self.cache.free) + sum(len(t) for t in self.cache.tables.values()):
            raise ValueError(
                f"one request needs {self.cache.blocks_for(n)} blocks; the pool has fewer: "
                "give Engine a larger n_blocks."
            )

    @torch.no_grad()
    def run(self, requests: list[Request]) -> list[Request]:
        """Serve ``requests`` (each arriving at its ``arrival`` step); return them with their tokens and times."""
        for r in requests:
            self._check(r)
        waiting = sorted(range(len(requests)), key=lambda i: (requests[i].arrival, i))
        running: list[int] = []
        reserved: dict[int, int] = {}  # blocks each running request may still take
        step, start = 0, time.perf_counter()
        while waiting or running:
            # admit, first come first served, while a slot and the blocks it may need are free
            while waiting and requests[waiting[0]].arrival <= step and len(running) < self.max_batch:
                r = requests[waiting[0]]
                need = self.cache.blocks_for(r.prompt.numel() + r.max_new_tokens)
                if need > len(self.cache.free) - sum(reserved.values()):
                    break
                i = waiting.pop(0)
                reserved[i] = need
                r.admitted_step = step
                self._prefill(i, r, start)
                reserved[i] -= len(self.cache.tables[i])
                running.append(i)
            if running:
                self._decode(running, requests, reserved, start)
                for i in [i for i in running if len(requests[i].tokens) >= requests[i].max_new_tokens]:
                    running.remove(i)
                    reserved.pop(i)
                    self.generators.pop(i, None)
                    self.cache.release(i)
            step += 1
        return requests

    def _prefill(self, i: int, r: Request, start: float) -> None:
        n = r.prompt.numel()
        self.cache.reserve(i, n)
        pos = torch.arange(n, device=self.device)[None]  # (1, T)
        logits = self.forward([i], r.prompt.to(self.device)[None], pos)
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
        active = [i for i in running if len(requests[i].tokens) < requests[i].max_new_tokens]
        if not active:
            return
        for i in active:  # room for the position this step writes
            before = len(self.cache.tables[i])
            self.cache.reserve(i, self.cache.lengths[i] + 1)
            reserved[i] -= len(self.cache.tables[i]) - before
        tokens = torch.tensor([[requests[i].tokens[-1]] for i in active], device=self.device)  # (B, 1)
        pos = torch.tensor([[self.cache.lengths[i]] for i in active], device=self.device)  # (B, 1)
        logits = self.forward(active, tokens, pos)
        now = time.perf_counter() - start
        for row, i in enumerate(active):
            self.cache.lengths[i] += 1
            requests[i].tokens.append(self._pick(i, requests[i], logits[row : row + 1]))
            if len(requests[i].tokens) >= requests[i].max_new_tokens:
                requests[i].done_s = now
        self.waste.append(1 - self.cache.held() / max(self.cache.in_use(), 1))
