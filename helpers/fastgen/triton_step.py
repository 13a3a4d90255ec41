"""The hand-written decode step: GPT-2 at batch 1, greedy, in Triton kernels (the file that imports Triton).

Three kernels a layer plus one (37 for GPT-2's 12 layers, against over a hundred in the compiled step,
which notebook 05 counts with the profiler):

1. ``_rowdot_kernel`` with ``QKV``: LayerNorm + the q, k, v product, keys and values written straight into the
   cache (the first block's also adds the token and position embeddings, ``EMBED``);
2. ``_attention_kernel``: attention of one head over the cache in blocks of positions (the online softmax),
   times that head's columns of the output projection;
3. ``_mlp_kernel``: the whole MLP (LayerNorm, first product, GELU, second product);

and last ``_rowdot_kernel`` with ``ARGMAX``: the output layer, whose last program to finish picks the token.
Where programs split a sum (the attention's heads, the MLP's hidden units) their parts meet in fp32 atomic
adds into a buffer that starts as the residual plus the bias. At batch 1 a step's time is mostly its kernels'
fixed costs, not bytes, so fewer kernels is what counts; on Hopper each kernel is also launched early
(programmatic dependent launch, ``PDL``) and reads its weights while the kernel before it finishes.
Activations stay in fp32, and atomic adds make the order of their additions vary from run to run (relative
differences near 1e-7): a greedy choice between two logits that tie that closely could differ between runs.

On a CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported):
slowly, but exactly the same code, which is how the tests and notebook 05b check them.
"""

from __future__ import annotations

import math
import os

import torch

from .. import capability

try:  # Triton comes with PyTorch's CUDA builds, and with the dev extra on Linux; the CPU path needs none of it
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    triton = tl = gdc_launch_dependents = gdc_wait = None

_jit = triton.jit if triton is not None else (lambda fn: fn)


def runnable(device: torch.device) -> bool:
    """Whether the kernels can run for a model on ``device``: Triton, and a CUDA GPU or Triton's interpreter."""
    return triton is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def fits(config) -> bool:
    """Whether the kernels take this model's shape: they index a head with ``tl.arange``, so a power of 2."""
    head_dim = config.n_embd // config.n_head
    return head_dim & (head_dim - 1) == 0


# --- the kernels ---------------------------------------------------------------------------------------
# Each kernel reads first what no earlier kernel writes (weights, biases, LayerNorm parameters), then waits for
# the kernel before it (gdc_wait; with PDL it was launched before that one finished), then reads activations and
# writes. Waits chain, so everything written by any earlier kernel is visible after the wait.

# Launch configuration of each kernel: (rows per program, warps) for "qkv" and "head", (output rows per program,
# warps) for "attn" (one head per program too), (hidden units per program, warps) for "mlp"; cached positions
# per block of the attention (all blocks up to the cache's length are unrolled in one program; swept at 160
# positions; at 1,024, 4 blocks, the step ran 4,283 tokens/s against 4,880 at 160: H100, 2026-11-26).
# Picked by timing a sweep on an H100 (2026-11-26, GPT-2 124M, bf16, 32 + 128 tokens): 186 us per token, against
# 198-240 us for the other attention settings tried and 210 us for the earlier step of 5 kernels a layer.
KERNEL_CONFIGS = {"qkv": (8, 4), "attn": (256, 8), "mlp": (16, 8), "head": (16, 4)}
ATTN_BLOCK = 256
PDL = True  # programmatic dependent launch on GPUs that have it (compute capability 9.0, Hopper, and later)
# Not done here: asking the L2 cache for weights that later kernels read (prefetch.global.L2, as the persistent
# step does; the batched step asks only for its own kernel's weights, before it waits). Tried on an H100 on
# 2026-12-07 (a throwaway sweep, not recorded): each kernel asked for its share of the weights 1 to 28 MB further
# along the token's weights, issued before or after it let the next kernel start; the step was slower at every
# distance, most of all at 16 and 28 MB.


@_jit
def _layer_norm(x, gamma, beta, col_ok, K: tl.constexpr, eps):
    centered = tl.where(col_ok, x - tl.sum(x, 0) / K, 0.0)
    return centered / tl.sqrt(tl.sum(centered * centered, 0) / K + eps) * gamma + beta


@_jit
def gelu_tanh(h):
    """GPT-2's tanh GELU, ``0.5 h (1 + tanh(u))`` with ``u = sqrt(2 / pi) (h + 0.044715 h^3)``, written with
    ``tanh(u) = 1 - 2 / (exp(2u) + 1)`` (Triton has ``exp``; the form stays finite for large ``|u|``)."""
    u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
    return 0.5 * h * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))


@_jit
def softmax_block(q, k, v, ok, m, total, acc):
    """One block of cached positions in the online softmax: scores of the query ``q`` (D,) against the keys
    ``k`` (L, D), positions where ``ok`` (L,) is false left out; the running maximum ``m``, the running sum of
    exp(score - m) ``total`` and the weighted sum of values ``acc`` (D,) rescaled to the new maximum and updated.
    After the last block, ``acc / total`` is the attention's output."""
    s = tl.where(ok, tl.sum(k * q[None, :], 1), -1e30)  # (L,) scores
    top = tl.maximum(m, tl.max(s, 0))
    p = tl.where(ok, tl.exp(s - top), 0.0)  # (L,)
    shrink = tl.exp(m - top)
    return top, total * shrink + tl.sum(p, 0), acc * shrink + tl.sum(p[:, None] * v, 0)


@_jit
def store_qkv(y, rows, ok, q_ptr, k_ptr, v_ptr, pos, cache_stride, K: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Rows ``rows`` of the q, k, v product (``y``, fp32, with the last axis over rows) where they belong: q's
    into ``q``, k's and v's into the caches (H, L, D) at position ``pos``, in the caches' dtype. For a batch
    (``batched_step``), ``y`` has a row per sequence and the three pointers are columns of pointers, one per
    sequence's q and caches."""
    part = rows // K  # 0: q, 1: k, 2: v
    j = rows - part * K  # the row within q, k or v
    head = j // HEAD_DIM
    at = head * cache_stride + pos * HEAD_DIM + (j - head * HEAD_DIM)  # places in the cache
    tl.store(q_ptr + j, y, mask=ok & (part == 0))
    tl.store(k_ptr + at, y.to(k_ptr.dtype.element_ty), mask=ok & (part == 1))
    tl.store(v_ptr + at, y.to(v_ptr.dtype.element_ty), mask=ok & (part == 2))


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
        store_qkv(y, rows, row_ok, y_ptr, k_ptr, v_ptr, tl.load(pos_ptr), cache_stride, K, HEAD_DIM)
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
        m, total, acc = softmax_block(q, k, v, ok, m, total, acc)
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
    h = tl.where(hid_ok, gelu_tanh(h), 0.0)  # GPT-2's tanh GELU
    y = tl.sum(w_out.to(tl.float32) * h[:, None], 0)
    if pid == 0:
        y += x + tl.load(out_b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.atomic_add(y_ptr + cols, y, mask=col_ok, sem="relaxed")


class TritonStep:
    """One greedy decode step of ``decoder`` at batch 1 in Triton kernels, with the same interface as the
    compiled step's (``generator.ModelStep``): calling it reads the token ``tok`` (1, 1) at position ``pos`` (1,),
    writes the keys and values at ``pos``, the next token at ``pos + 1`` of ``out`` (1, L) and into ``tok``, and
    advances ``pos``. Everything stays on the device, so steps can be captured in one CUDA graph.

    The decoder's caches must be set up for batch 1 (``Decoder.setup_caches``) before a step runs; its weights
    must be float (the kernels take no int8).
    """

    def __init__(self, decoder, tok: torch.Tensor, pos: torch.Tensor, out: torch.Tensor):
        if triton is None:
            raise RuntimeError("The Triton step needs Triton (it comes with PyTorch's CUDA builds).")
        self.decoder, self.tok, self.pos, self.out = decoder, tok, pos, out
        cfg, device = decoder.config, decoder.wpe.weight.device
        f32 = dict(device=device, dtype=torch.float32)
        c = cfg.n_embd
        n_parts = triton.cdiv(cfg.vocab_size, KERNEL_CONFIGS["head"][0])  # programs of the output layer
        # activations (fp32), the output layer's best logit and index per program, and the count of programs done
        self.x = torch.zeros(2, c, **f32)  # a block's input and output residuals, in turn
        self.x2 = torch.zeros(c, **f32)  # the residual after attention (the MLP's input)
        self.q = torch.zeros(c, **f32)
        self.logits = torch.zeros(cfg.vocab_size, **f32)
        self.best = torch.zeros(2, n_parts, **f32)
        self.count = torch.zeros(1, dtype=torch.int32, device=device)
        self.pdl = PDL and device.type == "cuda" and bool(capability.pdl(capability.capability(device)))

    def _rowdot(self, site, x, layer, y, ln, *, embed=False, kv=None, next_=None, zero=None):
        d, w = self.decoder, layer.weight
        n, k = w.shape
        rows, warps = KERNEL_CONFIGS[site]
        _rowdot_kernel[(triton.cdiv(n, rows),)](
            x, w, w if layer.bias is None else layer.bias, y, ln.weight, ln.bias,
            self.tok, self.pos, d.head.weight, d.wpe.weight,
            w if kv is None else kv[0], w if kv is None else kv[1], d.length * (k // d.config.n_head),
            x if next_ is None else next_[0], w if next_ is None else next_[1], x if zero is None else zero,
            self.best, self.best.shape[1], self.count, self.out, n, ln.eps,
            K=k, HEAD_DIM=k // d.config.n_head, EMBED=embed, QKV=kv is not None, ARGMAX=site == "head",
            PDL=self.pdl, BLOCK_N=rows, BLOCK_K=triton.next_power_of_2(k),
            BLOCK_P=triton.next_power_of_2(self.best.shape[1]),
            num_warps=warps, **({"launch_pdl": True} if self.pdl else {}),
        )  # fmt: skip

    def __call__(self) -> None:
        d, cfg = self.decoder, self.decoder.config
        c, head_dim, length = cfg.n_embd, cfg.n_embd // cfg.n_head, d.length
        pdl = {"launch_pdl": True} if self.pdl else {}
        for i, block in enumerate(d.blocks):
            x_in, x_out = self.x[i % 2], self.x[(i + 1) % 2]  # the block's input and output residuals
            cache = (block.cache.k[0], block.cache.v[0])  # (H, L, D) each: batch 1
            self._rowdot(
                "qkv", x_in, block.qkv, self.q, block.ln_1, embed=i == 0, kv=cache, next_=(self.x2, block.proj.bias),
                zero=x_out,
            )  # fmt: skip
            rows, warps = KERNEL_CONFIGS["attn"]
            block_l = min(ATTN_BLOCK, triton.next_power_of_2(length))
            _attention_kernel[(cfg.n_head, triton.cdiv(c, rows))](
                self.q, *cache, block.proj.weight, self.x2, self.pos, length * head_dim, 1 / math.sqrt(head_dim), c,
                K=c, HEAD_DIM=head_dim, BLOCK_L=block_l, N_BLOCKS=triton.cdiv(length, block_l),
                BLOCK_N=rows, PDL=self.pdl, num_warps=warps, **pdl,
            )  # fmt: skip
            hidden, warps = KERNEL_CONFIGS["mlp"]
            n_hidden = block.fc.weight.shape[0]
            _mlp_kernel[(triton.cdiv(n_hidden, hidden),)](
                self.x2, block.fc.weight, block.fc.bias, block.out.weight, block.out.bias, block.ln_2.weight,
                block.ln_2.bias, x_out, n_hidden, block.ln_2.eps,
                K=c, BLOCK_H=hidden, BLOCK_K=triton.next_power_of_2(c), PDL=self.pdl, num_warps=warps, **pdl,
            )  # fmt: skip
        self._rowdot("head", self.x[len(d.blocks) % 2], d.head, self.logits, d.ln_f)
