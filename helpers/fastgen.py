"""The workbook's fast decoder for any Hugging Face ``GPT2LMHeadModel`` (the pocket model or GPT-2).

It takes the model's weights and decodes with the few plain ideas notebook 05 builds step by step:

- a **static KV cache**: keys and values live in preallocated buffers of the module, written in place
  at each position, so every decode step has the same shapes;
- **one compiled decode step** (``torch.compile``) of fixed shapes, with **CUDA graphs** on a GPU
  (``TUNED_CUDA_GRAPHS``): a whole step is replayed as one launch instead of ~100 Python-driven ones;
  ``graph_steps=16`` records 16 greedy steps, token choice included, in one CUDA graph of its own;
- one-row matrix products written as multiply-and-sum (``matvec``), which the compiler fuses into one
  pass over each weight at batch 1;
- any float dtype (bf16 on a GPU), and optional **int8 weights**: on a GPU, int8 weight-only with the
  dequantization fused into the matmul by the compiler; on a CPU, PyTorch's dynamic int8 kernels
  (``torch.ao``'s FBGEMM path, the fastest CPU path notebook 03 measured).

Greedy decoding gives the same tokens as ``generate()`` (tested on the pocket model); sampling
(temperature, top-k) is reproducible with a seed. Prompts of different lengths are left-padded and
masked, as ``generate()`` does with an ``attention_mask``.

    fast = FastGPT2(model, dtype=torch.bfloat16)
    out = fast.generate(input_ids, max_new_tokens=128)
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from . import quant


def matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for a single row ``x``, written as multiply-and-sum.

    Compiled, this becomes one reduction kernel that reads each weight once, in its stored dtype
    (int8 included), and accumulates in fp32: at batch 1 that can beat a general matrix multiply,
    which is built for many rows. Eager, it would build the whole product in memory: use it compiled.
    """
    return (x.unsqueeze(-2).float() * weight.float()).sum(-1).to(x.dtype)


class Linear(nn.Module):
    """A linear layer with an optional int8 weight (one scale per output channel) and an optional
    ``matvec`` path for one-row inputs (the compiled decode step at batch 1).

    int8: ``y = (x @ codes.T) * scale + bias``; compiled, the int8-to-float conversion is fused into the
    multiply, so the weights are read as int8 (a quarter of fp32's bytes, half of bf16's).
    """

    def __init__(self, weight_out_in: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, int8: bool = False):
        super().__init__()
        w = weight_out_in.detach()
        if int8:
            codes, scale, _ = quant.quantize(w.float(), 8, granularity="channel")
            self.weight = nn.Parameter(codes, requires_grad=False)
            self.scale = nn.Parameter(scale.squeeze(1).to(dtype), requires_grad=False)
        else:
            self.weight = nn.Parameter(w.to(dtype).contiguous(), requires_grad=False)
            self.scale = None
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.matvec = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.matvec and x.shape[:-1].numel() == 1:
            y = matvec(x, self.weight)
        else:
            y = F.linear(x, self.weight.to(x.dtype))
        if self.scale is not None:
            y = y * self.scale
        return y if self.bias is None else y + self.bias

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the (dequantized) weight: the tied token embedding reads them."""
        rows = F.embedding(ids, self.weight)
        return rows if self.scale is None else rows.to(self.scale.dtype) * self.scale[ids].unsqueeze(-1)


def _from_conv1d(conv, dtype: torch.dtype, int8: bool) -> Linear:
    """transformers' ``Conv1D`` (weight stored (in, out)) as a ``Linear`` (weight (out, in))."""
    return Linear(conv.weight.t(), conv.bias, dtype, int8)


def _cpu_int8(layer: Linear) -> nn.Module:
    """torch.ao's dynamic int8 linear layer (FBGEMM kernels, activations quantized per call) from a ``Linear``."""
    from torch.ao.quantization import quantize_dynamic

    n_out, n_in = layer.weight.shape
    lin = nn.Linear(n_in, n_out, bias=layer.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(layer.weight.float())
        if layer.bias is not None:
            lin.bias.copy_(layer.bias.float())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)[0]


class Block(nn.Module):
    """One GPT-2 transformer block reading and writing its slice of the static KV cache."""

    def __init__(self, h, n_head: int, dtype: torch.dtype, int8: bool):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = copy.deepcopy(h.ln_1).to(dtype), copy.deepcopy(h.ln_2).to(dtype)
        self.qkv = _from_conv1d(h.attn.c_attn, dtype, int8)
        self.proj = _from_conv1d(h.attn.c_proj, dtype, int8)
        self.fc = _from_conv1d(h.mlp.c_fc, dtype, int8)
        self.out = _from_conv1d(h.mlp.c_proj, dtype, int8)

    def forward(self, x, k_cache, v_cache, pos, mask):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        k_cache.index_copy_(2, pos, k)  # write this step's keys and values at their positions, in place
        v_cache.index_copy_(2, pos, v)
        y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


# What "auto" compiles with on a GPU: CUDA graphs (as mode="reduce-overhead") plus inductor's coordinate-descent
# tuning of each generated kernel's launch configuration, the setting gpt-fast uses for decoding.
TUNED_CUDA_GRAPHS = {"triton.cudagraphs": True, "coordinate_descent_tuning": True}
TUNED = {"coordinate_descent_tuning": True}


class FastGPT2(nn.Module):
    """A decoder built from a ``GPT2LMHeadModel``'s weights (copied; the original is left as it is).

    ``dtype``: float dtype of weights and activations (default: the model's). ``int8``: int8 weights
    (see the module docstring). ``compile``: ``"auto"`` compiles the decode step on a GPU with CUDA
    graphs (``TUNED_CUDA_GRAPHS``) and leaves it eager on a CPU (``python -m helpers.ladder`` measures both);
    ``True``/``False`` force it; a string is passed to ``torch.compile`` as its mode, a dict as its options.
    ``matvec``: one-row matrix products as multiply-and-sum (see ``matvec``); ``"auto"`` uses it when the
    step is compiled on a GPU. ``graph_steps`` (GPU, greedy): capture that many decode steps, token choice
    included, in one CUDA graph, so Python launches one graph per ``graph_steps`` tokens.
    """

    def __init__(
        self,
        model,
        *,
        dtype: torch.dtype | None = None,
        int8: bool = False,
        compile="auto",
        matvec="auto",
        graph_steps: int = 0,
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
        if int8 and self.device.type == "cpu" and self.dtype != torch.float32:
            raise ValueError("On a CPU, FastGPT2's int8 path (dynamic int8) runs in float32: leave dtype unset.")
        gpu_int8 = int8 and self.device.type == "cuda"  # weight-only int8; on a CPU, dynamic int8 (below)
        src = model.transformer
        with torch.no_grad():
            self.wpe = nn.Embedding.from_pretrained(src.wpe.weight.detach().to(self.dtype).clone(), freeze=True)
            self.blocks = nn.ModuleList(Block(h, cfg.n_head, self.dtype, gpu_int8) for h in src.h)
            self.ln_f = copy.deepcopy(src.ln_f).to(self.dtype)
            # the output layer shares its weight with the token embedding, as in GPT-2: _embed reads its rows
            self.head = Linear(src.wte.weight, None, self.dtype, gpu_int8)
        if int8 and self.device.type == "cpu":
            self.wte = nn.Embedding.from_pretrained(self.head.weight.detach().clone(), freeze=True)  # stays fp32
            for block in self.blocks:
                for name in ("qkv", "proj", "fc", "out"):
                    setattr(block, name, _cpu_int8(getattr(block, name)))
            self.head = _cpu_int8(self.head)
        self.requires_grad_(False)
        self._batch = self._length = None
        on_gpu = self.device.type == "cuda"
        self.graph_steps = graph_steps if on_gpu and compile else 0
        if compile == "auto":
            # several steps per CUDA graph (graph_steps): we capture the graphs ourselves, so the compiler must not
            compile = (TUNED if self.graph_steps > 1 else TUNED_CUDA_GRAPHS) if on_gpu else False
        self.compile_mode = "default" if compile is True else (compile or None)
        if self.graph_steps > 1 and self.uses_cuda_graphs:
            raise ValueError(
                "graph_steps captures CUDA graphs itself: compile without them (e.g. compile=fastgen.TUNED)."
            )
        if matvec == "auto":
            matvec = self.compile_mode is not None and self.device.type == "cuda"
        for layer in self.modules():
            if isinstance(layer, Linear):
                layer.matvec = bool(matvec)
        self._decode = None

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (tied weights once; the KV cache not included).

        The separate fp32 token embedding of the CPU int8 path is left out: a step reads one row of it.
        """
        total = 0
        for m in self.modules():
            if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):  # int8 weights (not parameters), float bias
                b = m.bias()
                total += m.weight().numel() + (0 if b is None else b.numel() * b.element_size())
        lookup = {id(t) for t in self.wte.parameters()} if hasattr(self, "wte") else set()
        seen = {id(t): t for t in self.parameters() if id(t) not in lookup}
        return total + sum(t.numel() * t.element_size() for t in seen.values())

    # --- the model ---------------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.wte(ids) if hasattr(self, "wte") else self.head.rows(ids)

    def _allocate(self, batch: int, length: int) -> None:
        """(Re)allocate the KV cache for ``batch`` sequences of ``length`` positions; shapes then stay fixed."""
        if (batch, length) == (self._batch, self._length):
            return
        cfg = self.config
        shape = (cfg.n_layer, batch, cfg.n_head, length, cfg.n_embd // cfg.n_head)
        self.register_buffer("k_cache", torch.zeros(shape, device=self.device, dtype=self.dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, device=self.device, dtype=self.dtype), persistent=False)
        self.register_buffer("pad", torch.zeros(batch, dtype=torch.long, device=self.device), persistent=False)
        self.register_buffer("arange", torch.arange(length, device=self.device), persistent=False)
        # the token and position fed to a captured step, and the output it writes into (graph_steps > 1)
        self.register_buffer("_tok", torch.zeros(batch, 1, dtype=torch.long, device=self.device), persistent=False)
        self.register_buffer("_pos", torch.zeros(1, dtype=torch.long, device=self.device), persistent=False)
        self.register_buffer("_out", torch.zeros(batch, length, dtype=torch.long, device=self.device), persistent=False)
        self._graphs = {}
        self._batch, self._length = batch, length
        self._decode = None  # new shapes: compile again

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits of the last position for tokens ``ids`` (B, T) at cache positions ``pos`` (T,)."""
        positions = (pos[None, :] - self.pad[:, None]).clamp(min=0)  # left padding shifts each row's positions
        x = self._embed(ids) + self.wpe(positions)
        keys = self.arange[None, None, :]
        mask = (keys <= pos[None, :, None]) & (keys >= self.pad[:, None, None])  # causal, and not padding
        mask = mask.unsqueeze(1)
        for i, block in enumerate(self.blocks):
            x = block(x, self.k_cache[i], self.v_cache[i], pos, mask)
        return self.head(self.ln_f(x[:, -1])).float()

    @property
    def uses_cuda_graphs(self) -> bool:
        mode = self.compile_mode
        return mode in ("reduce-overhead", "max-autotune") or (isinstance(mode, dict) and mode.get("triton.cudagraphs"))

    def _step(self):
        if self._decode is None:
            self._decode = self.forward
            if isinstance(self.compile_mode, dict):
                self._decode = torch.compile(self.forward, options=self.compile_mode, fullgraph=True, dynamic=False)
            elif self.compile_mode is not None:
                self._decode = torch.compile(self.forward, mode=self.compile_mode, fullgraph=True, dynamic=False)
        return self._decode

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
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}.")
        b, t = input_ids.shape
        total = t + max_new_tokens
        if max_new_tokens < 1 or total > self.config.n_positions:
            raise ValueError(
                f"max_new_tokens must be >= 1 and prompt + new tokens within the model's "
                f"{self.config.n_positions} positions; got {t} + {max_new_tokens}."
            )
        if temperature < 0 or (top_k is not None and top_k < 1):
            raise ValueError("temperature must be >= 0 and top_k >= 1.")
        self._allocate(b, total)
        ids = input_ids.to(self.device)
        if attention_mask is None:
            self.pad.zero_()
        else:
            mask = attention_mask.to(self.device).long()
            if bool((mask[:, 1:] < mask[:, :-1]).any()):
                raise ValueError("FastGPT2 needs left padding: in attention_mask, 0s must come before 1s.")
            self.pad.copy_(t - mask.sum(1))
        gen = None
        if temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(torch.seed() if seed is None else seed)
        if self.graph_steps > 1 and temperature == 0:
            return self._generate_graphed(ids, total)
        out = torch.empty(b, total, dtype=torch.long, device=self.device)
        out[:, :t] = ids
        logits = self.forward(ids, self.arange[:t])  # prefill: the whole prompt at once, eager
        step = self._step()
        for i in range(t, total):
            out[:, i] = self._pick(logits, temperature, top_k, gen)
            if i + 1 < total:
                if self.uses_cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = step(out[:, i : i + 1], self.arange[i : i + 1])
        return out

    def _graph(self, k: int) -> torch.cuda.CUDAGraph:
        """A CUDA graph of ``k`` greedy decode steps that read and write the module's buffers only."""
        if k not in self._graphs:
            step = self._step()

            def steps():
                for _ in range(k):
                    nxt = step(self._tok, self._pos).argmax(-1, keepdim=True)
                    self._pos.add_(1)
                    self._out.index_copy_(1, self._pos, nxt)  # the new token goes at the next position
                    self._tok.copy_(nxt)

            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # compile and warm up outside the capture (writes go to unused slots)
                for _ in range(2):
                    self._pos.zero_()
                    steps()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._pos.zero_()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                steps()
            self._graphs[k] = graph
        return self._graphs[k]

    def _generate_graphed(self, ids: torch.Tensor, total: int) -> torch.Tensor:
        """Greedy decoding with ``graph_steps`` decode steps replayed per CUDA graph launch."""
        t = ids.shape[1]
        k = min(self.graph_steps, self._length - 1)
        big, small = self._graph(k), self._graph(1)
        logits = self.forward(ids, self.arange[:t])  # prefill, eager
        self._out[:, :t] = ids
        self._out[:, t] = logits.argmax(-1)
        self._tok.copy_(self._out[:, t : t + 1])
        self._pos.fill_(t)
        remaining = total - t - 1
        for _ in range(remaining // k):
            big.replay()
        for _ in range(remaining % k):
            small.replay()
        return self._out[:, :total].clone()

    @staticmethod
    def _pick(logits, temperature, top_k, gen) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(F.softmax(logits, -1), 1, generator=gen).squeeze(1)

    def generate_fn(self):
        """A ``generate_fn(input_ids, n)`` for ``helpers.bench.generation``: greedy, exactly n new tokens."""
        return lambda input_ids, n: self.generate(input_ids, n)
