"""The generator: ``FastGPT2``, the fast decoder's user-facing class (options, ``generate``, ``stream``, padding).

It builds the eager ``Decoder`` (``model.py``) from a ``GPT2LMHeadModel``, swaps its layers for int8 ones when
asked (``helpers.quant``), chooses how steps run (``policy.py``: eager, compiled, CUDA graphs) and which greedy
step runs them: the model's own (``ModelStep``) or the hand-written one (``triton_step.TritonStep``, batch 1 on a
GPU). Both steps have one interface: calling one reads the current token at the current position and writes
the next, all in preallocated tensors, so either can be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import capability, q8, quant
from . import batched_step, cpu_step, dataflow_step, persistent_step, policy, stream_step, triton_step
from .model import Decoder, Linear

STREAM_BLOCK = 128  # stream() sizes the KV cache in blocks of this many positions
PREFILL_GRAPHS = 8  # on a GPU, CUDA graphs of the prefill kept for this many prompt shapes
# kernels="auto" runs greedy batches of 2 to this many sequences on the batched Triton step (16-bit weights), and
# larger ones on the compiled step. The H100 ladder of 2026-12-07 (bf16, results/recorded/) timed the batched step
# ahead of the compiled step at batches 2, 4, 8, 16 and 64, and behind at 32; every batch of 2 to 16 runs the same
# tile of 16 sequences (batched_step.BatchedStep.block_b) as the timed ones. The other GPUs where "auto" runs
# kernels (compute capability 9.x: the H200) take the same limit untimed, and so does fp16. In fp32 the step's
# products do not run on tensor cores and were not timed: "auto" leaves fp32 batches to the compiled step.
BATCHED_AUTO = 16
# A step compiled on a CPU gets a KV cache of a multiple of this many positions (unused positions are masked):
# nearby lengths then share one compiled step, and it avoids a cache of exactly 160 positions, the benchmark's
# 32 + 128, for which PyTorch 2.13's generated CPU code for the written-out attention corrupted memory and
# aborted the process (an Intel Xeon with AVX-512 and AMX, 2 threads; fine with 1 thread, with AVX2 code, with
# the library's attention, and at 64 to 320 positions in steps of 64: seen 2026-12-07).
CPU_CACHE_BLOCK = 64


def pick_tokens(logits: torch.Tensor, temperature: float, top_k: int | None, gen) -> torch.Tensor:
    """The next token of each row of ``logits`` (B, V): the largest at temperature 0, else a draw from the
    softmax of ``logits / temperature`` restricted to the ``top_k`` largest, with generator ``gen``."""
    if temperature == 0:
        return logits.argmax(-1)  # (B,)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, -1), 1, generator=gen).squeeze(1)  # (B,)


class ModelStep:
    """One greedy decode step of ``decode`` (the decoder's forward, eager or compiled): reads the token ``tok``
    (B, 1) at position ``pos`` (1,), writes the next token at ``pos + 1`` of ``out`` (B, L) and into ``tok``, and
    advances ``pos`` (the interface ``triton_step.TritonStep`` shares)."""

    def __init__(self, decode, tok: torch.Tensor, pos: torch.Tensor, out: torch.Tensor):
        self.decode, self.tok, self.pos, self.out = decode, tok, pos, out

    def __call__(self) -> None:
        nxt = self.decode(self.tok, self.pos).argmax(-1, keepdim=True)  # (B, 1)
        self.pos.add_(1)
        self.out.index_copy_(1, self.pos, nxt)  # the new token goes at the next position
        self.tok.copy_(nxt)


class FastGPT2(nn.Module):
    """A decoder built from a ``GPT2LMHeadModel``'s weights (copied; the original is left as it is).

    ``dtype``: float dtype of weights and activations (default: the model's). ``int8``: int8 weights, by
    swapping the decoder's ``Linear`` layers: on a GPU ``quant.Int8Linear`` (weight-only, dequantization fused
    into the product when compiled), on a CPU ``quant.dynamic_int8_linear`` (``torch.ao``'s FBGEMM kernels,
    the fastest CPU path notebook 03 measured); ``int8="q8_0"`` (CPU) swaps in ``q8.Q8Linear`` instead:
    llama.cpp's q8_0 format computed by the workbook's own C++ kernel (notebook 03c), built once for this CPU.
    ``kv_cache="int8"``: keys and values stored in int8 with a scale per head and position (``Int8KVCache``).
    ``compile``: ``"auto"`` compiles the decode step on a GPU with
    CUDA graphs (``policy.TUNED_CUDA_GRAPHS``) and leaves it eager on a CPU (``python -m helpers.ladder``
    measures both); ``True``/``False`` force it; a string is passed to ``torch.compile`` as its mode, a dict as
    its options. ``matvec``: one-row matrix products as multiply-and-sum (``model.matvec``); ``"auto"`` uses it
    when the step is compiled on a GPU. ``graph_steps`` (GPU, greedy): capture that many decode steps, token
    choice included, in one CUDA graph, so Python launches one graph per ``graph_steps`` tokens.
    ``kernels``: greedy decoding at batch 1 runs a hand-written step: on a GPU the Triton step (``triton_step``),
    ``graph_steps`` steps per CUDA graph, which ``"auto"`` uses where it was checked, with float weights and
    ``graph_steps > 1``; ``"persistent"`` runs the GPU's step as one persistent kernel a token instead of one
    kernel a stage (``persistent_step``; slower than the Triton step where timed, so never chosen by ``"auto"``);
    ``"dataflow"`` runs it as one launch a token of many small tasks that wait on counts instead of grid barriers
    (``dataflow_step``; slower than the Triton step where timed, never chosen by ``"auto"`` either);
    ``"stream"`` runs it as one CUDA C++ kernel a token whose weights stream through shared memory while its
    blocks wait for each other (``stream_step``; bf16 or fp16 weights, never chosen by ``"auto"``); with
    ``int8="q8_0"`` the C++ step (``cpu_step``: the whole token in one call), which
    ``"auto"`` uses with a float KV cache. With ``kernels=True``, greedy batches of several sequences run the
    batched Triton step (``batched_step``: products on tensor cores), which ``"auto"`` uses for batches of up to
    ``BATCHED_AUTO`` sequences in bf16 or fp16 (timed ahead of the compiled step in bf16 on an H100; fp16
    untimed; ``batched_upto``: the largest batch that uses it); sampling uses the model's step (``compile``).
    ``graph_prefill``: the prompt's pass recorded in a CUDA graph, one per prompt shape (``policy.CapturedPrefill``;
    a new shape costs about three eager passes once); ``"auto"`` uses it on a GPU unless the compiler records the
    step's CUDA graphs (the two do not mix). Eager, a short prompt's pass waits on Python launching a few hundred
    small kernels: the time to first token is mostly that.

    Greedy decoding gives the same tokens as ``generate()`` (tested on the pocket model); sampling (temperature,
    top-k) is reproducible with a seed. Prompts of different lengths are left-padded and masked, as
    ``generate()`` does with an ``attention_mask``.
    """

    def __init__(
        self,
        model,
        *,
        dtype: torch.dtype | None = None,
        int8: bool | str = False,
        kv_cache: str = "float",
        compile="auto",
        matvec="auto",
        graph_steps: int = 0,
        kernels="auto",
        graph_prefill="auto",
    ):
        super().__init__()
        cfg = model.config
        if getattr(cfg, "model_type", None) != "gpt2":
            raise ValueError(f"FastGPT2 takes a GPT2LMHeadModel, got a {type(model).__name__}.")
        if cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"FastGPT2 implements GPT-2's tanh GELU, not {cfg.activation_function!r}.")
        if cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn or not cfg.scale_attn_weights:
            raise ValueError("FastGPT2 implements GPT-2's standard attention scaling only.")
        self.config = cfg
        self.device = next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        on_gpu = self.device.type == "cuda"
        if int8 not in (False, True, "q8_0"):
            raise ValueError(f"int8 takes False, True or 'q8_0' (the CPU kernel of notebook 03c), got {int8!r}.")
        if int8 == "q8_0" and on_gpu:
            raise ValueError("int8='q8_0' is a CPU kernel: on a GPU use int8=True (weight-only int8).")
        if int8 and not on_gpu and self.dtype != torch.float32:
            raise ValueError("On a CPU, FastGPT2's int8 paths take float32 activations: leave dtype unset.")
        if kv_cache not in ("float", "int8"):
            raise ValueError(f"kv_cache takes 'float' or 'int8' (int8 keys and values, notebook 08), got {kv_cache!r}.")
        self.int8 = int8
        self.model = Decoder(model, self.dtype)
        self.model.kv_int8 = kv_cache == "int8"
        if int8 and on_gpu:
            quant.swap_linears(self.model, quant.Int8Linear.from_float, Linear)
        elif int8:  # the output layer loses its rows: the token embedding keeps a float copy of them
            self.model.wte = nn.Embedding.from_pretrained(self.model.head.weight.detach().clone(), freeze=True)
            make = q8.Q8Linear.from_float if int8 == "q8_0" else quant.dynamic_int8_linear
            quant.swap_linears(self.model, make, Linear)
        # how steps run: the policy, applied from outside the model
        self.graph_steps = graph_steps if on_gpu and compile else 0
        self.compile_mode = policy.compile_options(compile, on_gpu, self.graph_steps)
        if self.graph_steps > 1 and self.uses_cuda_graphs:
            raise ValueError(
                "graph_steps captures CUDA graphs itself: compile without them (e.g. compile=fastgen.TUNED)."
            )
        if self.compile_mode is not None and not on_gpu:  # the compiler fuses written-out attention on a CPU
            for block in self.model.blocks:
                block.sdpa = False
        if matvec == "auto":
            matvec = self.compile_mode is not None and on_gpu
        for layer in self.model.modules():
            if isinstance(layer, (Linear, quant.Int8Linear)):
                layer.matvec = bool(matvec)
        runnable = triton_step.runnable(self.device)
        asked = kernels
        if kernels not in ("auto", True, False, "persistent", "dataflow", "stream"):
            raise ValueError(
                f"kernels takes 'auto', True, False, 'persistent', 'dataflow' or 'stream', got {kernels!r}."
            )
        # one launch a token (GPU): two designs in Triton, one in CUDA C++
        self.one_launch = kernels if kernels in ("persistent", "dataflow", "stream") else None
        if self.one_launch and int8 == "q8_0":
            raise ValueError(f"kernels={kernels!r} is a GPU step; with int8='q8_0' use kernels=True.")
        if kernels == "stream" and not on_gpu:
            raise ValueError("kernels='stream' is CUDA C++: one launch a token needs a GPU. Use kernels=True.")
        if int8 == "q8_0":  # the CPU's hand-written step: the whole token in one C++ call (cpu_step)
            if kernels == "auto":
                kernels = kv_cache == "float"
            elif kernels and kv_cache != "float":
                raise ValueError("kernels=True with int8='q8_0' needs a float KV cache (the C++ step reads fp32).")
        elif kernels == "auto":  # only on GPUs where the step was checked (helpers.capability.triton_step)
            checked = on_gpu and bool(capability.triton_step(capability.capability(self.device)))
            kernels = runnable and checked and self.graph_steps > 1 and not int8 and triton_step.fits(cfg)
            kernels = kernels and kv_cache == "float"  # the Triton step reads a float cache
        elif kernels and not (runnable and not int8 and kv_cache == "float"):
            raise ValueError(
                f"kernels={kernels!r} needs Triton, a CUDA GPU, float weights (not int8) and a float KV cache."
            )
        elif kernels and not triton_step.fits(cfg):
            head_dim = cfg.n_embd // cfg.n_head
            raise ValueError(f"kernels={kernels!r} needs a head size that is a power of 2; this model's is {head_dim}.")
        self.kernels = bool(kernels)
        # greedy batches of 2 to batched_upto sequences run the batched Triton step: any when asked for
        # (kernels=True), up to BATCHED_AUTO with "auto" in 16-bit weights (where it was timed ahead), none otherwise
        self.batched_upto = 0
        if self.kernels and int8 != "q8_0":
            half = self.dtype in (torch.bfloat16, torch.float16)
            self.batched_upto = math.inf if asked is True else BATCHED_AUTO if asked == "auto" and half else 0
        if graph_prefill not in ("auto", True, False):
            raise ValueError(f"graph_prefill takes 'auto', True or False, got {graph_prefill!r}.")
        if graph_prefill is True and not on_gpu:
            raise ValueError("graph_prefill=True records CUDA graphs: it needs a CUDA GPU.")
        if graph_prefill is True and self.uses_cuda_graphs:
            raise ValueError(
                "graph_prefill=True records a CUDA graph of its own, which does not mix with the compiler's CUDA "
                "graphs (an illegal memory access on an H100, torch 2.11, after another model compiled with them had "
                "run): use graph_steps (our own graphs for the steps too) or compile without CUDA graphs."
            )
        self.graph_prefill = (on_gpu and not self.uses_cuda_graphs) if graph_prefill == "auto" else graph_prefill
        self._decode = self._greedy = None  # the decode step (compiled or eager) and the greedy step over it
        self._graphs = {}  # CUDA graphs of greedy steps, by steps per graph
        self._prefills = {}  # CUDA graphs of the prefill, by prompt shape (the most recent PREFILL_GRAPHS)
        self._tok = self._pos = self._out = None  # what a greedy step reads and writes: sized by _allocate

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits of the last position (``Decoder.forward``): the eager step."""
        return self.model(ids, pos)

    @property
    def uses_cuda_graphs(self) -> bool:
        return policy.uses_cuda_graphs(self.compile_mode)

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (``Decoder.weight_bytes``)."""
        return self.model.weight_bytes()

    def _allocate(self, batch: int, length: int) -> None:
        """Size the KV cache for ``batch`` sequences of ``length`` positions, and the buffers a greedy step
        reads and writes (the token, the position, the output); new shapes drop the compiled step and graphs."""
        if not self.model.setup_caches(batch, length):
            return
        self._tok = torch.zeros(batch, 1, dtype=torch.long, device=self.device)  # (B, 1)
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)  # (1,)
        self._out = torch.zeros(batch, length, dtype=torch.long, device=self.device)  # (B, L)
        self._decode = self._greedy = None
        self._graphs = {}
        self._prefills = {}

    def _prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the last prompt position, writing the prompt's keys and values into the cache: eager, or
        on a GPU replayed from a CUDA graph of this prompt shape (recorded the first time the shape comes)."""
        positions = self.model.arange[: ids.shape[1]]  # (T,)
        if not self.graph_prefill:
            return self.model(ids, positions)
        shape = tuple(ids.shape)
        if shape not in self._prefills:
            if len(self._prefills) >= PREFILL_GRAPHS:  # forget the oldest shape
                del self._prefills[next(iter(self._prefills))]
            self._prefills[shape] = policy.CapturedPrefill(self.model, shape, positions, self.device)
        return self._prefills[shape](ids)

    def _step(self):
        """The decode step (the decoder's forward), compiled by the policy the first time it is needed."""
        if self._decode is None:
            self._decode = policy.compiled(self.model.forward, self.compile_mode)
        return self._decode

    def _batched(self, batch: int) -> bool:
        """Whether a greedy batch of ``batch`` sequences runs the batched Triton step (2 to ``batched_upto``)."""
        return 1 < batch <= self.batched_upto

    def greedy_step(self):
        """The greedy step for the current batch: when ``kernels``, at batch 1 the C++ step (q8_0 weights), the
        persistent, dataflow or streaming step or the Triton step (GPU), and for batches of 2 to ``batched_upto``
        sequences the batched Triton step; else the model's."""
        if self._greedy is None:
            if self.kernels and self.model.batch == 1 and self.int8 == "q8_0":
                self._greedy = cpu_step.CppStep(self.model, self._tok, self._pos, self._out)
            elif self.kernels and self.model.batch == 1 and self.one_launch == "persistent":
                self._greedy = persistent_step.PersistentStep(self.model, self._tok, self._pos, self._out)
            elif self.kernels and self.model.batch == 1 and self.one_launch == "dataflow":
                self._greedy = dataflow_step.DataflowStep(self.model, self._tok, self._pos, self._out)
            elif self.kernels and self.model.batch == 1 and self.one_launch == "stream":
                self._greedy = stream_step.StreamStep(self.model, self._tok, self._pos, self._out)
            elif self.kernels and self.model.batch == 1:
                self._greedy = triton_step.TritonStep(self.model, self._tok, self._pos, self._out)
            elif self._batched(self.model.batch):  # a batch: tensor-core products (batched_step)
                self._greedy = batched_step.BatchedStep(self.model, self._tok, self._pos, self._out)
            else:
                self._greedy = ModelStep(self._step(), self._tok, self._pos, self._out)
        return self._greedy

    # --- decoding ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        attention_mask: torch.Tensor | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Prompt plus ``max_new_tokens`` tokens, (B, T + max_new_tokens).

        ``temperature=0`` is greedy; otherwise tokens are sampled from softmax(logits / temperature),
        restricted to the ``top_k`` most likely when given, with a generator seeded by ``seed``.
        ``attention_mask`` (B, T) marks real tokens with 1; padding must be on the left.
        """
        ids, total, gen = self._prepare(input_ids, max_new_tokens, attention_mask, temperature, top_k, seed)
        b, t = ids.shape
        if t < input_ids.shape[1]:  # _prepare dropped one sequence's left padding: decode without, put it back
            out = self.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
            return torch.cat([input_ids[:, : input_ids.shape[1] - t].to(self.device), out], 1)
        if temperature == 0 and (self.graph_steps > 1 or (self.kernels and b == 1) or self._batched(b)):
            return self._generate_in_place(ids, total)
        out = torch.empty(b, total, dtype=torch.long, device=self.device)
        out[:, :t] = ids
        for i, nxt in enumerate(self._tokens(ids, total, temperature, top_k, gen), start=t):
            out[:, i] = nxt
        return out

    @torch.no_grad()
    def stream(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ):
        """Yield the new tokens one at a time, a (B,) tensor each, as they are made: to show text as it is typed.

        Same tokens as ``generate`` (one step per token). The KV cache is sized in blocks of ``STREAM_BLOCK``
        positions, so prompts of different lengths reuse one compiled step instead of compiling again for
        every total length (positions past the end are masked out).
        """
        need = input_ids.shape[-1] + max_new_tokens
        length = min(self.config.n_positions, -(-need // STREAM_BLOCK) * STREAM_BLOCK)
        ids, total, gen = self._prepare(input_ids, max_new_tokens, None, temperature, top_k, seed, length=length)
        yield from self._tokens(ids, total, temperature, top_k, gen)

    def _prepare(self, input_ids, max_new_tokens, attention_mask, temperature, top_k, seed, length=None):
        """Check the arguments, size the KV cache (at least ``length`` positions) and set the padding."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}.")
        b, t = input_ids.shape
        if b < 1 or t < 1:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one prompt token.")
        if input_ids.is_floating_point() or input_ids.is_complex():
            raise ValueError(f"input_ids must hold integer token ids, not {input_ids.dtype}.")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(
                f"token ids must lie in 0..{self.config.vocab_size - 1} (the model's vocabulary); got {lo}..{hi}. "
                "Was the prompt encoded with another model's tokenizer?"
            )
        total = t + max_new_tokens
        if max_new_tokens < 1 or total > self.config.n_positions:
            raise ValueError(
                f"max_new_tokens must be >= 1 and prompt + new tokens within the model's "
                f"{self.config.n_positions} positions; got {t} + {max_new_tokens}."
            )
        if not math.isfinite(temperature) or temperature < 0 or (top_k is not None and top_k < 1):
            raise ValueError(f"temperature must be a finite number >= 0 and top_k >= 1; got {temperature}, {top_k}.")
        ids, pad = input_ids.to(self.device), None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}: "
                    "they must match, one mask value per token."
                )
            mask = attention_mask.to(self.device).long()
            if bool((mask[:, 1:] < mask[:, :-1]).any()):
                raise ValueError("FastGPT2 needs left padding: in attention_mask, 0s must come before 1s.")
            if bool((mask.sum(1) == 0).any()):
                raise ValueError("Every sequence needs at least one real token (a 1 in attention_mask).")
            pad = t - mask.sum(1)
            if b == 1:  # one sequence: its left padding is dropped (the hand-written step assumes none)
                ids, pad = ids[:, int(pad[0]) :], None
        need = max(ids.shape[1] + max_new_tokens, length or 0)
        if self.compile_mode is not None and self.device.type == "cpu":  # see CPU_CACHE_BLOCK
            need = min(self.config.n_positions, -(-need // CPU_CACHE_BLOCK) * CPU_CACHE_BLOCK)
        self._allocate(b, need)
        if pad is None:
            self.model.pad.zero_()
        else:
            self.model.pad.copy_(pad)
        gen = None
        if temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(torch.seed() if seed is None else seed)
        return ids, ids.shape[1] + max_new_tokens, gen

    def _tokens(self, ids, total, temperature, top_k, gen):
        """The new tokens in turn: the prompt in one pass (``_prefill``), then one (compiled) step per token."""
        t, arange = ids.shape[1], self.model.arange
        logits = self._prefill(ids)
        step = self._step()
        for i in range(t, total):
            nxt = self._pick(logits, temperature, top_k, gen)
            yield nxt
            if i + 1 < total:
                if self.uses_cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = step(nxt.view(-1, 1), arange[i : i + 1])

    def _captured(self, k: int) -> policy.CapturedSteps:
        """``k`` greedy steps in one CUDA graph, captured once per cache shape."""
        if k not in self._graphs:
            self._graphs[k] = policy.CapturedSteps(self.greedy_step(), k, self.device, self._pos.zero_)
        return self._graphs[k]

    def _generate_in_place(self, ids: torch.Tensor, total: int) -> torch.Tensor:
        """Greedy decoding with the greedy step writing into ``_out``: on a GPU ``graph_steps`` steps (at least 1)
        per CUDA graph launch; in Triton's interpreter (tests, CPU) one step at a time."""
        t = ids.shape[1]
        k = min(max(self.graph_steps, 1), self.model.length - 1)
        on_gpu = self.device.type == "cuda"
        # a graph of k steps, then graphs of 8, 4, 2 and 1 steps for the rest: at most a few launches remain
        sizes = [k] + [n for n in (8, 4, 2, 1) if n < k]
        if on_gpu:  # capture before the prefill: capturing runs steps that move the position
            graphs = {n: self._captured(n) for n in sizes}
        logits = self._prefill(ids)
        self._out[:, :t] = ids
        self._out[:, t] = logits.argmax(-1)
        self._tok.copy_(self._out[:, t : t + 1])
        self._pos.fill_(t)
        remaining = total - t - 1
        if not on_gpu:
            step = self.greedy_step()
            for _ in range(remaining):
                step()
        else:
            for n in sizes:
                for _ in range(remaining // n):
                    graphs[n].replay()
                remaining %= n
        if hasattr(self._greedy, "check"):  # the one-launch steps: did a wait give up?
            self._greedy.check()
        return self._out[:, :total].clone()

    @staticmethod
    def _pick(logits, temperature, top_k, gen) -> torch.Tensor:
        return pick_tokens(logits, temperature, top_k, gen)

    def generate_fn(self):
        """A ``generate_fn(input_ids, n)`` for ``helpers.bench.generation``: greedy, exactly n new tokens."""
        return lambda input_ids, n: self.generate(input_ids, n)
