"""The workbook's fast decoder for any Hugging Face ``GPT2LMHeadModel`` (the pocket model or GPT-2).

It takes the model's weights and decodes with the few plain ideas notebook 05 builds step by step:

- a **static KV cache**: keys and values live in preallocated buffers of the module, written in place
  at each position, so every decode step has the same shapes;
- **one compiled decode step** (``torch.compile``) of fixed shapes, with **CUDA graphs** on a GPU
  (``TUNED_CUDA_GRAPHS``): a whole step is replayed as one launch instead of ~160 kernel launches;
  ``graph_steps=16`` records 16 greedy steps, token choice included, in one CUDA graph of its own;
- one-row matrix products written as multiply-and-sum (``matvec``), which the compiler fuses into one
  pass over each weight at batch 1;
- on a GPU, for greedy decoding at batch 1 with ``graph_steps``, a **hand-written decode step** of Triton
  kernels instead of the compiled one (~160 kernels for GPT-2): three a layer plus one, 37 for GPT-2's 12
  layers. Kernel 1: LayerNorm + the q, k, v product (keys and values written straight into the cache);
  kernel 2: attention of one head times that head's columns of the output projection; kernel 3: the whole
  MLP (LayerNorm, first product, GELU, second product); last, the output layer, whose last program to finish
  picks the token. Where programs split a sum (the attention's heads, the MLP's hidden units) their parts
  meet in fp32 atomic adds into a buffer that starts as the residual plus the bias. At batch 1 a step's time
  is mostly its kernels' fixed costs, not bytes, so fewer kernels is what counts; on Hopper each kernel is
  also launched early (programmatic dependent launch, ``PDL``) and reads its weights while the kernel before
  it finishes. Activations stay in fp32, and atomic adds make the order of their additions vary from run to
  run (relative differences near 1e-7): a greedy choice between two logits that tie that closely could
  differ between runs. Tested against the eager step in Triton's interpreter (tokens and logits). On an H100
  (2026-11-26), in fp32 its greedy tokens were those of ``generate()`` (pocket model, 4 prompts, 64 tokens);
  in bf16 they matched the eager bf16 decoder's for GPT-2 124M (128 tokens, every run) and for 3 of 4
  pocket prompts: the fourth took another token at a near tie after about 30 tokens, since this step keeps
  activations in fp32 where the eager one rounds them to bf16;
- any float dtype (bf16 on a GPU), and optional **int8 weights**: on a GPU, int8 weight-only with the
  dequantization fused into the matmul by the compiler; on a CPU, PyTorch's dynamic int8 kernels
  (``torch.ao``'s FBGEMM path, the fastest CPU path notebook 03 measured).

Greedy decoding gives the same tokens as ``generate()`` (tested on the pocket model); sampling
(temperature, top-k) is reproducible with a seed. Prompts of different lengths are left-padded and
masked, as ``generate()`` does with an ``attention_mask``.

    fast = FastGPT2(model, dtype=torch.bfloat16, graph_steps=16)
    out = fast.generate(input_ids, max_new_tokens=128)
    for token in fast.stream(input_ids, 64):  # one (B,) tensor per step, as it is made (notebook 07's playground)
        ...
"""

from __future__ import annotations

import copy
import math
import os
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from . import capability, quant

try:  # Triton comes with PyTorch's CUDA builds; the CPU path needs none of it
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    triton = tl = gdc_launch_dependents = gdc_wait = None

_jit = triton.jit if triton is not None else (lambda fn: fn)


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
STREAM_BLOCK = 128  # stream() sizes the KV cache in blocks of this many positions


# --- the hand-written decode step (GPU, greedy, batch 1) -----------------------------------------------
# Three kernels a layer and one for the output layer. Each kernel reads first what no earlier kernel writes
# (weights, biases, LayerNorm parameters), then waits for the kernel before it (gdc_wait; with PDL it was
# launched before that one finished), then reads activations and writes. Waits chain, so everything written by
# any earlier kernel is visible after the wait. Sums split across programs meet in fp32 atomic adds.

# Launch configuration of each kernel: (rows per program, warps) for "qkv" and "head", (output rows per program,
# warps) for "attn" (one head per program too), (hidden units per program, warps) for "mlp"; cached positions
# per block of the attention (all blocks up to the cache's length are unrolled in one program; swept at 160
# positions; at 1,024, 4 blocks, the step ran 4,283 tokens/s against 4,880 at 160: H100, 2026-11-26).
# Picked by timing a sweep on an H100 (2026-11-26, GPT-2 124M, bf16, 32 + 128 tokens): 186 us per token, against
# 198-240 us for the other attention settings tried and 210 us for the earlier step of 5 kernels a layer.
KERNEL_CONFIGS = {"qkv": (8, 4), "attn": (256, 8), "mlp": (16, 8), "head": (16, 4)}
ATTN_BLOCK = 256
PDL = True  # programmatic dependent launch on GPUs that have it (compute capability 9.0, Hopper, and later)


@_jit
def _layer_norm(x, gamma, beta, col_ok, K: tl.constexpr, eps):
    centered = tl.where(col_ok, x - tl.sum(x, 0) / K, 0.0)
    return centered / tl.sqrt(tl.sum(centered * centered, 0) / K + eps) * gamma + beta


@_jit
def _rowdot_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, ln_w_ptr, ln_b_ptr, tok_ptr, pos_ptr, wte_ptr, wpe_ptr,
    k_ptr, v_ptr, cache_stride, next_ptr, next_bias_ptr, zero_ptr, part_ptr, n_parts, count_ptr, out_ptr,
    N, eps,
    K: tl.constexpr, HEAD_DIM: tl.constexpr, EMBED: tl.constexpr, QKV: tl.constexpr, ARGMAX: tl.constexpr,
    PDL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """``y = LN(x) @ w.T (+ bias)`` for one row ``x``, BLOCK_N output rows per program.

    QKV (a block's first kernel): the row is ``x``, or (EMBED) the token's embedding ``wte[tok] + wpe[pos]``;
    q goes to ``y``, k and v into the cache at ``pos``; program 0 also starts the attention's sum,
    ``next = x + next_bias`` (the residual plus the projection's bias), and zeroes ``zero`` (the block's output).
    ARGMAX (the output layer): each program writes its best logit and index to ``part``; the last program to
    finish picks the token among them, writes it at ``pos + 1`` of ``out`` and into ``tok``, and advances ``pos``.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    col_ok = cols < K
    w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    gamma = tl.load(ln_w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    beta = tl.load(ln_b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    if QKV:
        bias = tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    if EMBED:
        tok = tl.load(tok_ptr)
        x = tl.load(wte_ptr + tok * K + cols, mask=col_ok, other=0.0).to(tl.float32)
        x += tl.load(wpe_ptr + tl.load(pos_ptr) * K + cols, mask=col_ok, other=0.0).to(tl.float32)
    else:
        x = tl.load(x_ptr + cols, mask=col_ok, other=0.0)
    if QKV:
        if pid == 0:
            tl.store(next_ptr + cols, x + tl.load(next_bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32), col_ok)
            tl.store(zero_ptr + cols, tl.zeros([BLOCK_K], tl.float32), mask=col_ok)
    y = tl.sum(w.to(tl.float32) * _layer_norm(x, gamma, beta, col_ok, K, eps)[None, :], 1)
    if QKV:
        y += bias
        part = rows // K  # 0: q, 1: k, 2: v
        j = rows - part * K
        head = j // HEAD_DIM
        at = head * cache_stride + tl.load(pos_ptr) * HEAD_DIM + (j - head * HEAD_DIM)
        tl.store(y_ptr + j, y, mask=row_ok & (part == 0))
        tl.store(k_ptr + at, y.to(k_ptr.dtype.element_ty), mask=row_ok & (part == 1))
        tl.store(v_ptr + at, y.to(v_ptr.dtype.element_ty), mask=row_ok & (part == 2))
    else:
        tl.store(y_ptr + rows, y, mask=row_ok)
    if ARGMAX:
        y = tl.where(row_ok, y, float("-inf"))
        tl.store(part_ptr + pid, tl.max(y, 0))
        tl.store(part_ptr + n_parts + pid, (pid * BLOCK_N + tl.argmax(y, 0)).to(tl.float32))  # exact below 2**24
        tl.debug_barrier()  # every thread's stores before the count (released by the atomic)
        if tl.atomic_add(count_ptr, 1, sem="acq_rel") == n_parts - 1:  # the last program: finish the argmax
            offs = tl.arange(0, BLOCK_P)
            best = tl.load(part_ptr + offs, mask=offs < n_parts, other=float("-inf"), volatile=True)
            token = tl.load(part_ptr + n_parts + tl.argmax(best, 0), volatile=True).to(tl.int64)
            pos = tl.load(pos_ptr)
            tl.store(out_ptr + pos + 1, token)
            tl.store(tok_ptr, token)
            tl.store(pos_ptr, pos + 1)
            tl.store(count_ptr, 0)


@_jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, w_ptr, y_ptr, pos_ptr, cache_stride, scale, N,
    K: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr, N_BLOCKS: tl.constexpr, BLOCK_N: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """Attention of head ``program_id(0)`` over the cached positions <= pos, times its columns of the output
    projection ``w`` at rows block ``program_id(1)``, added to ``y`` (which holds the residual plus bias).

    Each of a head's programs computes that head's attention again (3 times for GPT-2 with 256 rows per program):
    reading its keys and values is cheap next to reading the projection's weights at the lengths timed (160).
    """
    head, block = tl.program_id(0), tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
    w = tl.load(w_ptr + rows[:, None] * K + head * HEAD_DIM + d[None, :], mask=(rows < N)[:, None], other=0.0)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    pos = tl.load(pos_ptr)
    q = tl.load(q_ptr + head * HEAD_DIM + d) * scale
    # blocks of cached positions, unrolled, so that all their loads can be in flight at once (positions past pos
    # are masked: they read nothing); the first block sets the running max, later ones rescale (online softmax)
    m = tl.full([], -1e30, tl.float32)
    total = tl.zeros([], tl.float32)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    for block_l in tl.static_range(N_BLOCKS):
        at = block_l * BLOCK_L + tl.arange(0, BLOCK_L)
        ok = at <= pos
        offs = head * cache_stride + at[:, None] * HEAD_DIM + d[None, :]
        k = tl.load(k_ptr + offs, mask=ok[:, None], other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=ok[:, None], other=0.0).to(tl.float32)
        s = tl.where(ok, tl.sum(k * q[None, :], 1), -1e30)
        top = tl.maximum(m, tl.max(s, 0))
        p = tl.where(ok, tl.exp(s - top), 0.0)
        shrink = tl.exp(m - top)
        total = total * shrink + tl.sum(p, 0)
        acc = acc * shrink + tl.sum(p[:, None] * v, 0)
        m = top
    y = tl.sum(w.to(tl.float32) * (acc / total)[None, :], 1)
    tl.atomic_add(y_ptr + rows, y, mask=rows < N, sem="relaxed")


@_jit
def _mlp_kernel(
    x_ptr, fc_w_ptr, fc_b_ptr, out_w_ptr, out_b_ptr, ln_w_ptr, ln_b_ptr, y_ptr, H, eps,
    K: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """GPT-2's MLP for hidden units block ``program_id(0)``: ``gelu(LN(x) @ fc.T + b)`` times the matching
    columns of ``out``, added to ``y`` (zeroed by the block's first kernel); program 0 also adds ``x + out_b``."""
    pid = tl.program_id(0)
    hid = pid * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_K)
    hid_ok, col_ok = hid < H, cols < K
    both = hid_ok[:, None] & col_ok[None, :]
    w_in = tl.load(fc_w_ptr + hid[:, None] * K + cols[None, :], mask=both, other=0.0)  # (hidden, K)
    w_out = tl.load(out_w_ptr + cols[None, :] * H + hid[:, None], mask=both, other=0.0)  # out's columns, (hidden, K)
    b_in = tl.load(fc_b_ptr + hid, mask=hid_ok, other=0.0).to(tl.float32)
    gamma = tl.load(ln_w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    beta = tl.load(ln_b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    x = tl.load(x_ptr + cols, mask=col_ok, other=0.0)
    h = tl.sum(w_in.to(tl.float32) * _layer_norm(x, gamma, beta, col_ok, K, eps)[None, :], 1) + b_in
    u = 0.7978845608028654 * (h + 0.044715 * h * h * h)  # GPT-2's tanh GELU, tanh(u) = 1 - 2 / (exp(2u) + 1)
    h = tl.where(hid_ok, 0.5 * h * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)), 0.0)
    y = tl.sum(w_out.to(tl.float32) * h[:, None], 0)
    if pid == 0:
        y += x + tl.load(out_b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.atomic_add(y_ptr + cols, y, mask=col_ok, sem="relaxed")


class FastGPT2(nn.Module):
    """A decoder built from a ``GPT2LMHeadModel``'s weights (copied; the original is left as it is).

    ``dtype``: float dtype of weights and activations (default: the model's). ``int8``: int8 weights
    (see the module docstring). ``compile``: ``"auto"`` compiles the decode step on a GPU with CUDA
    graphs (``TUNED_CUDA_GRAPHS``) and leaves it eager on a CPU (``python -m helpers.ladder`` measures both);
    ``True``/``False`` force it; a string is passed to ``torch.compile`` as its mode, a dict as its options.
    ``matvec``: one-row matrix products as multiply-and-sum (see ``matvec``); ``"auto"`` uses it when the
    step is compiled on a GPU. ``graph_steps`` (GPU, greedy): capture that many decode steps, token choice
    included, in one CUDA graph, so Python launches one graph per ``graph_steps`` tokens.
    ``kernels``: greedy decoding at batch 1 runs the hand-written Triton step (see the module docstring),
    ``graph_steps`` steps per CUDA graph; ``"auto"`` uses it on a GPU with Triton, float weights and
    ``graph_steps > 1``. Other batches and sampling use the compiled step.
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
        kernels="auto",
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
        # Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on a CPU, one step at a time: for tests
        runnable = triton is not None and (on_gpu or os.environ.get("TRITON_INTERPRET") == "1")
        head_dim = cfg.n_embd // cfg.n_head
        fits = head_dim & (head_dim - 1) == 0  # the kernels index a head with tl.arange: a power of 2
        if kernels == "auto":  # only on GPUs where the step was checked (helpers.capability.triton_step)
            checked = on_gpu and bool(capability.triton_step(capability.capability(self.device)))
            kernels = runnable and checked and self.graph_steps > 1 and not int8 and fits
        elif kernels and not (runnable and not int8):
            raise ValueError("kernels=True needs Triton, a CUDA GPU and float weights (not int8).")
        elif kernels and not fits:
            raise ValueError(f"kernels=True needs a head size that is a power of 2; this model's is {head_dim}.")
        self.kernels = bool(kernels)
        self._ws = None

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

    def _workspace(self) -> None:
        """Buffers of the hand-written step: activations (fp32), the output layer's blocks and their count."""
        cfg, f32 = self.config, dict(device=self.device, dtype=torch.float32)
        c = cfg.n_embd
        n_parts = triton.cdiv(cfg.vocab_size, KERNEL_CONFIGS["head"][0])  # programs of the output layer
        self._ws = types.SimpleNamespace(
            x=torch.zeros(2, c, **f32),  # a block's input and output, in turn
            x2=torch.zeros(c, **f32), q=torch.zeros(c, **f32), logits=torch.zeros(cfg.vocab_size, **f32),
            best=torch.zeros(2, n_parts, **f32), count=torch.zeros(1, dtype=torch.int32, device=self.device),
            pdl=PDL and self.device.type == "cuda" and bool(capability.pdl(capability.capability(self.device))),
        )  # fmt: skip

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
        ids, total, gen = self._prepare(input_ids, max_new_tokens, attention_mask, temperature, top_k, seed)
        b, t = ids.shape
        if t < input_ids.shape[1]:  # _prepare dropped one sequence's left padding: decode without, put it back
            out = self.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
            return torch.cat([input_ids[:, : input_ids.shape[1] - t].to(self.device), out], 1)
        if temperature == 0 and (self.graph_steps > 1 or (self.kernels and b == 1)):
            return self._generate_graphed(ids, total)
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

        Same tokens as ``generate`` (one compiled step per token). The KV cache is sized in blocks of
        ``STREAM_BLOCK`` positions, so prompts of different lengths reuse one compiled step instead of
        compiling again for every total length (positions past the end are masked out).
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
        self._allocate(b, max(ids.shape[1] + max_new_tokens, length or 0))
        if pad is None:
            self.pad.zero_()
        else:
            self.pad.copy_(pad)
        gen = None
        if temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(torch.seed() if seed is None else seed)
        return ids, ids.shape[1] + max_new_tokens, gen

    def _tokens(self, ids, total, temperature, top_k, gen):
        """The new tokens in turn: the prompt in one eager pass, then one (compiled) step per token."""
        t = ids.shape[1]
        logits = self.forward(ids, self.arange[:t])
        step = self._step()
        for i in range(t, total):
            nxt = self._pick(logits, temperature, top_k, gen)
            yield nxt
            if i + 1 < total:
                if self.uses_cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = step(nxt.view(-1, 1), self.arange[i : i + 1])

    def _greedy_step(self) -> None:
        """One greedy decode step of the compiled model: reads ``_tok`` at ``_pos``, writes the next token."""
        nxt = self._step()(self._tok, self._pos).argmax(-1, keepdim=True)
        self._pos.add_(1)
        self._out.index_copy_(1, self._pos, nxt)  # the new token goes at the next position
        self._tok.copy_(nxt)

    def _rowdot(self, site, x, layer, y, ln, *, embed=False, kv=None, next_=None, zero=None):
        ws, w = self._ws, layer.weight
        n, k = w.shape
        rows, warps = KERNEL_CONFIGS[site]
        _rowdot_kernel[(triton.cdiv(n, rows),)](
            x, w, w if layer.bias is None else layer.bias, y, ln.weight, ln.bias,
            self._tok, self._pos, self.head.weight, self.wpe.weight,
            w if kv is None else kv[0], w if kv is None else kv[1], self._length * (k // self.config.n_head),
            x if next_ is None else next_[0], w if next_ is None else next_[1], x if zero is None else zero,
            ws.best, ws.best.shape[1], ws.count, self._out, n, ln.eps,
            K=k, HEAD_DIM=k // self.config.n_head, EMBED=embed, QKV=kv is not None, ARGMAX=site == "head",
            PDL=ws.pdl, BLOCK_N=rows, BLOCK_K=triton.next_power_of_2(k),
            BLOCK_P=triton.next_power_of_2(ws.best.shape[1]),
            num_warps=warps, **({"launch_pdl": True} if ws.pdl else {}),
        )  # fmt: skip

    def _kernel_step(self) -> None:
        """One greedy decode step at batch 1 in 3 Triton kernels a layer plus 1: reads ``_tok`` at ``_pos``,
        writes the keys and values at ``_pos``, the next token at ``_pos + 1`` of ``_out`` and into ``_tok``,
        and advances ``_pos``; everything stays on the GPU, so steps can be captured in one CUDA graph."""
        ws, cfg = self._ws, self.config
        c, head_dim = cfg.n_embd, cfg.n_embd // cfg.n_head
        pdl = {"launch_pdl": True} if ws.pdl else {}
        for i, block in enumerate(self.blocks):
            x_in, x_out = ws.x[i % 2], ws.x[(i + 1) % 2]  # the block's input and output residuals
            cache = (self.k_cache[i, 0], self.v_cache[i, 0])
            self._rowdot(
                "qkv", x_in, block.qkv, ws.q, block.ln_1, embed=i == 0, kv=cache, next_=(ws.x2, block.proj.bias),
                zero=x_out,
            )  # fmt: skip
            rows, warps = KERNEL_CONFIGS["attn"]
            block_l = min(ATTN_BLOCK, triton.next_power_of_2(self._length))
            _attention_kernel[(cfg.n_head, triton.cdiv(c, rows))](
                ws.q, *cache, block.proj.weight, ws.x2, self._pos, self._length * head_dim, 1 / math.sqrt(head_dim), c,
                K=c, HEAD_DIM=head_dim, BLOCK_L=block_l, N_BLOCKS=triton.cdiv(self._length, block_l),
                BLOCK_N=rows, PDL=ws.pdl, num_warps=warps, **pdl,
            )  # fmt: skip
            hidden, warps = KERNEL_CONFIGS["mlp"]
            n_hidden = block.fc.weight.shape[0]
            _mlp_kernel[(triton.cdiv(n_hidden, hidden),)](
                ws.x2, block.fc.weight, block.fc.bias, block.out.weight, block.out.bias, block.ln_2.weight,
                block.ln_2.bias, x_out, n_hidden, block.ln_2.eps,
                K=c, BLOCK_H=hidden, BLOCK_K=triton.next_power_of_2(c), PDL=ws.pdl, num_warps=warps, **pdl,
            )  # fmt: skip
        self._rowdot("head", ws.x[len(self.blocks) % 2], self.head, ws.logits, self.ln_f)

    def _graph(self, k: int) -> torch.cuda.CUDAGraph:
        """A CUDA graph of ``k`` greedy decode steps that read and write the module's buffers only."""
        if k not in self._graphs:
            step = self._kernel_step if self.kernels and self._batch == 1 else self._greedy_step

            def steps():
                for _ in range(k):
                    step()

            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            # compile and warm up outside the capture (what this writes, the prefill and decoding overwrite)
            with torch.cuda.stream(side):
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
        """Greedy decoding with ``graph_steps`` decode steps (at least 1) replayed per CUDA graph launch."""
        t = ids.shape[1]
        k = min(max(self.graph_steps, 1), self._length - 1)
        on_gpu = self.device.type == "cuda"
        if self.kernels and self._batch == 1 and self._ws is None:
            self._workspace()  # the hand-written step's buffers: the same for every cache length
        # a graph of k steps, then graphs of 8, 4, 2 and 1 steps for the rest: at most a few launches remain
        sizes = [k] + [n for n in (8, 4, 2, 1) if n < k]
        if on_gpu:  # capture before the prefill: capturing runs steps that move the position
            graphs = {n: self._graph(n) for n in sizes}
        logits = self.forward(ids, self.arange[:t])  # prefill, eager
        self._out[:, :t] = ids
        self._out[:, t] = logits.argmax(-1)
        self._tok.copy_(self._out[:, t : t + 1])
        self._pos.fill_(t)
        remaining = total - t - 1
        if not on_gpu:  # the kernels in Triton's interpreter (tests): no graphs, step by step
            for _ in range(remaining):
                self._kernel_step()
            return self._out[:, :total].clone()
        for n in sizes:
            for _ in range(remaining // n):
                graphs[n].replay()
            remaining %= n
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
