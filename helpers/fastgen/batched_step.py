"""The hand-written decode step for a batch of sequences: GPT-2's greedy token for B sequences at once, in
Triton kernels whose products run on tensor cores (``tl.dot``).

At batch 1 a product multiplies each weight once (``triton_step``: a row of weights times one vector, on the
ordinary cores). A batch of B sequences multiplies each weight B times, and the same bytes then carry B times
the arithmetic: a tile of weights read once is multiplied by a tile of B rows of activations, which is a small
matrix product, the work tensor cores do. Five kernels a layer plus one:

1. ``_linear_kernel`` with ``QKV``: LayerNorm + the q, k, v product; keys and values go straight into the cache
   (the first layer's also gathers the tokens' embeddings, ``EMBED``);
2. ``_attention_kernel``: one (sequence, head) pair per program, the online softmax over the cache;
3. ``_linear_kernel``: the output projection, added to the residual (``RESIDUAL``);
4. ``_linear_kernel`` with ``GELU``: LayerNorm + the MLP's first product + GELU;
5. ``_linear_kernel``: the MLP's second product, added to the residual;

and last ``_linear_kernel`` with ``ARGMAX``: the output layer, whose last program to finish picks each
sequence's token. LayerNorm is applied to each tile of activations as the product reads it (the row's mean and
spread are computed first, from the L2 cache); the residual stays in fp32, products take their inputs in the
weights' dtype and sum in fp32, as the eager step's do. The products added to the residual may sum in shares
of the summed dimension (``SPLIT_K``) added atomically, in any order: on a GPU their fp32 sums can then differ
in the last bits from run to run, and a greedy token can flip where two candidates nearly tie. Sequences may
be left-padded (``Decoder.pad``): a sequence's positions count from its first real token, and its attention
skips the padding.

On a CPU the kernels run in Triton's interpreter, slowly but the same code, which is how the tests check them.
"""

from __future__ import annotations

import math

import torch

from .. import capability
from .triton_step import _jit, gdc_launch_dependents, gdc_wait, gelu_tanh, softmax_block, store_qkv, tl, triton

# Launch configuration: output rows per program for each product, and for the products added to the residual
# (which can sum in place, with atomic adds) the number of programs that share each output's sum: a batch's step
# reads every weight once, like batch 1's, so it is bandwidth-bound too, and needs many programs reading at once
# (GPT-2's products have 768 to 3,072 outputs; an H100 has 132 multiprocessors).
BLOCK_N = {"qkv": 32, "proj": 32, "fc": 32, "out": 32, "head": 128}
SPLIT_K = {"proj": 3, "out": 6}  # programs along the summed dimension (1 where it would not cut whole tiles: k_share)
# Values of the summed dimension per tile of a product: 128 halves the tiles each program loads one after the
# other against 64 (timed on an H100, 2026-12-07, batch 8, one run: 1.23x the tokens/s of 64; the other settings
# tried there, proj and out split 6 and 12 ways, or tiles of 16 outputs split 2 and 4 ways, were slower).
BLOCK_K = 128
PREFETCH = True  # each program asks the L2 cache for its weights before it waits for the kernel before it (GPU)
MAX_BLOCK_B = 64  # sequences per tile; larger batches take several tiles (programs along the grid's 2nd axis)
BLOCK_L = 64  # cached positions per block of the attention's loop
NUM_WARPS = 4  # warps per program; 8 where a product's tile holds WIDE_TILE sums or more
# Sums (sequences x outputs) in a product's tile from which a program runs on 8 warps (4 spill registers, sm_90).
# At batch 32 (tiles of 32 sequences x 32 outputs in the layers' products; the output layer's 32 x 128 already
# runs 8 warps) the H100 ladder of 2026-12-07 had the batched step behind the compiled step; 1,024 here (8 warps
# for those tiles too) was faster at batch 32 in a throwaway sweep that day but still behind the compiled step,
# and is not the setting the recorded ladder ran.
WIDE_TILE = 2048
ARGMAX_ROWS = 8  # sequences whose tokens the output layer's last program picks at a time
PDL = True  # programmatic dependent launch on GPUs that have it (compute capability 9.0, Hopper, and later)


@_jit
def _rows_tile(x_ptr, wpe_ptr, rows, tok, at, k0, row_ok, K: tl.constexpr, BLOCK_K: tl.constexpr, EMBED: tl.constexpr):
    """Columns k0..k0 + BLOCK_K of the rows a product reads, fp32, and where they lie inside (BLOCK_B, BLOCK_K)
    each; zeros outside. The rows are ``rows`` of ``x`` (B, K), or (EMBED) the tokens' embeddings: row ``tok``
    of ``x`` (the token embedding) plus row ``at`` of ``wpe`` (their positions)."""
    cols = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    ok = row_ok[:, None] & (cols < K)[None, :]  # (BLOCK_B, BLOCK_K)
    if EMBED:
        t = tl.load(x_ptr + tok[:, None] * K + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        t += tl.load(wpe_ptr + at[:, None] * K + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    else:
        t = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    return t, ok


@_jit
def _row_stats(
    x_ptr, wpe_ptr, rows, tok, at, row_ok, eps,
    K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, EMBED: tl.constexpr,
):  # fmt: skip
    """Mean and 1/standard deviation of each row ``_rows_tile`` reads, for LayerNorm: two passes over K (the
    mean first, then the spread around it, as the eager LayerNorm computes it)."""
    total = tl.zeros([BLOCK_B], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        t, ok = _rows_tile(x_ptr, wpe_ptr, rows, tok, at, k0, row_ok, K, BLOCK_K, EMBED)
        total += tl.sum(t, 1)
    mean = total / K  # (BLOCK_B,)
    spread = tl.zeros([BLOCK_B], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        t, ok = _rows_tile(x_ptr, wpe_ptr, rows, tok, at, k0, row_ok, K, BLOCK_K, EMBED)
        d = tl.where(ok, t - mean[:, None], 0.0)  # (BLOCK_B, BLOCK_K)
        spread += tl.sum(d * d, 1)
    return mean, 1.0 / tl.sqrt(spread / K + eps)


@_jit
def _tile_lines(
    w_address, outs, N, k_lo, K: tl.constexpr, K_SHARE: tl.constexpr, ES: tl.constexpr, LINES: tl.constexpr
):
    """Byte addresses, one in each 128-byte line, of columns k_lo..k_lo + K_SHARE of rows ``outs`` of a weight
    (N, K) at byte ``w_address``, ``ES`` bytes a value: (BLOCK_N, LINES), where ``LINES`` is a power of 2 at
    least ``K_SHARE * ES / 128`` (the extra ones repeat the share's last byte; rows are assumed to start on
    128-byte lines, as PyTorch's allocations and GPT-2's widths make them)."""
    row = tl.minimum(outs, N - 1).to(tl.int64)  # (BLOCK_N,) rows past N ask for the last row again
    at = tl.minimum(tl.arange(0, LINES) * 128, K_SHARE * ES - 1)  # (LINES,) byte offsets in the row's share
    return w_address + (row[:, None] * K + k_lo) * ES + at[None, :]  # (BLOCK_N, LINES)


@_jit
def _prefetch_tile(
    w_address, outs, N, k_lo, K: tl.constexpr, K_SHARE: tl.constexpr, ES: tl.constexpr, LINES: tl.constexpr
):
    """Ask the L2 cache for columns k_lo..k_lo + K_SHARE of rows ``outs`` of a weight (N, K) at byte
    ``w_address``: one ``prefetch.global.L2`` per 128-byte line (``_tile_lines``). Nothing waits for it: the
    lines arrive while the program goes on, and its loads of them then hit in the L2 cache."""
    address = _tile_lines(w_address, outs, N, k_lo, K, K_SHARE, ES, LINES)  # (BLOCK_N, LINES)
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [address], dtype=tl.int32, is_pure=False, pack=1)


@_jit
def _linear_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, ln_w_ptr, ln_b_ptr, tok_ptr, pos_ptr, pad_ptr, wpe_ptr, k_ptr, v_ptr,
    cache_stride, part_ptr, n_parts, count_ptr, out_ptr, out_stride, B, N, eps, w_address,
    K: tl.constexpr, HEAD_DIM: tl.constexpr, LN: tl.constexpr, EMBED: tl.constexpr, QKV: tl.constexpr,
    GELU: tl.constexpr, RESIDUAL: tl.constexpr, ARGMAX: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    PDL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_SHARE: tl.constexpr,
    BLOCK_P: tl.constexpr, ARGMAX_ROWS: tl.constexpr, PREFETCH: tl.constexpr, ES: tl.constexpr, LINES: tl.constexpr,
):  # fmt: skip
    """``y = f(LN(x) @ w.T + bias)`` for BLOCK_B rows of ``x`` (B, K) and BLOCK_N rows of ``w`` (N, K): rows
    block ``program_id(0)``, output block ``program_id(1)`` (the programs of one tile of weights are neighbours,
    so a batch of several row blocks reads each tile from memory once and then from the L2 cache), and with
    K_SHARE < K (RESIDUAL only) share ``program_id(2)`` of the summed dimension, K_SHARE values, whose partial
    sums are added to ``y`` atomically (the bias with share 0's). PREFETCH: ask the L2 cache for the program's
    weights (at byte ``w_address``, ``ES`` bytes a value) before waiting for the kernel before it, so that they
    stream in while that kernel finishes.

    LN: normalize x's rows with ``ln_w``, ``ln_b``. EMBED (with QKV, the first layer): x's rows are the tokens'
    embeddings ``w_tok[tok] + wpe[pos - pad]``, where ``w_tok`` is ``x_ptr`` (the output layer's weight, tied to
    the embedding) and program (0, ·) writes them to ``y_ptr``, the residual. QKV: q goes to ``part_ptr`` (B, K),
    k and v into the cache at ``pos``. GELU: ``y = gelu(...)``. RESIDUAL: ``y += y`` as it was (the residual,
    summed in place). ARGMAX (the output layer): each program writes the best logit and row of each of its
    sequences to ``part`` (2, B, n_parts); the last program of each row block to finish (``count[1 + block]``)
    picks its sequences' tokens, ARGMAX_ROWS at a time, and writes them at ``pos + 1`` of ``out`` and into
    ``tok``; the last row block to finish (``count[0]``) advances ``pos``.
    """
    pid_b, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)  # (BLOCK_B,) sequences
    outs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) rows of w: outputs
    row_ok, out_ok = rows < B, outs < N
    k_lo = pid_k * K_SHARE  # the first value of the summed dimension this program sums over
    if PREFETCH:
        _prefetch_tile(w_address, outs, N, k_lo, K, K_SHARE, ES, LINES)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    pos = tl.load(pos_ptr)
    tok, at = rows, rows  # (BLOCK_B,) read by _rows_tile with EMBED only
    if EMBED:
        tok = tl.load(tok_ptr + rows, mask=row_ok, other=0)  # (BLOCK_B,)
        at = tl.maximum(pos - tl.load(pad_ptr + rows, mask=row_ok, other=0), 0)  # (BLOCK_B,) positions
        if pid_n == 0:  # the residual: the tokens' embeddings
            for k0 in range(0, K, BLOCK_K):
                e, ok = _rows_tile(x_ptr, wpe_ptr, rows, tok, at, k0, row_ok, K, BLOCK_K, EMBED)
                tl.store(y_ptr + rows[:, None] * K + k0 + tl.arange(0, BLOCK_K)[None, :], e, mask=ok)
    if LN:  # (with EMBED, of the embeddings, read from the weights: the residual is being written)
        mean, rstd = _row_stats(x_ptr, wpe_ptr, rows, tok, at, row_ok, eps, K, BLOCK_B, BLOCK_K, EMBED)
    acc = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
    for k0 in range(k_lo, k_lo + K_SHARE, BLOCK_K):
        x, ok = _rows_tile(x_ptr, wpe_ptr, rows, tok, at, k0, row_ok, K, BLOCK_K, EMBED)  # (BLOCK_B, BLOCK_K)
        cols = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        col_ok = cols < K
        if LN:  # normalized as the product reads it
            gamma = tl.load(ln_w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            beta = tl.load(ln_b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            x = tl.where(ok, (x - mean[:, None]) * rstd[:, None] * gamma[None, :] + beta[None, :], 0.0)
        w = tl.load(w_ptr + outs[:, None] * K + cols[None, :], mask=out_ok[:, None] & col_ok[None, :], other=0.0)
        if IEEE:  # fp32 weights: fp32 products (tensor cores would round the inputs to tf32)
            acc += tl.dot(x, tl.trans(w).to(tl.float32), input_precision="ieee")  # (BLOCK_B, BLOCK_N)
        else:  # the weights' dtype in, fp32 sums out, as the eager step's products
            acc += tl.dot(x.to(w.dtype), tl.trans(w))  # (BLOCK_B, BLOCK_N)
    if HAS_BIAS:  # (with K_SHARE < K, share 0 adds it)
        bias = tl.load(bias_ptr + outs, mask=out_ok, other=0.0).to(tl.float32)  # (BLOCK_N,)
        acc += tl.where(pid_k == 0, bias, 0.0)[None, :]
    ok = row_ok[:, None] & out_ok[None, :]  # (BLOCK_B, BLOCK_N)
    if QKV:  # each sequence's q row (in part, (B, K)) and cache (H, L, D), as pointers (BLOCK_B, 1)
        seq = rows[:, None] * (cache_stride * (K // HEAD_DIM))
        store_qkv(acc, outs, ok, part_ptr + rows[:, None] * K, k_ptr + seq, v_ptr + seq, pos, cache_stride, K, HEAD_DIM)
    elif ARGMAX:
        y = tl.where(ok, acc, float("-inf"))
        top = tl.max(y, 1)  # (BLOCK_B,) each sequence's best logit in this block of rows
        best = pid_n * BLOCK_N + tl.argmax(y, 1)  # (BLOCK_B,) its row
        tl.store(part_ptr + rows * n_parts + pid_n, top, mask=row_ok)
        tl.store(part_ptr + (B + rows) * n_parts + pid_n, best.to(tl.float32), mask=row_ok)  # exact below 2**24
        tl.debug_barrier()  # every thread's stores before the count (released by the atomic)
        if tl.atomic_add(count_ptr + 1 + pid_b, 1, sem="acq_rel") == n_parts - 1:  # this row block's last program
            parts = tl.arange(0, BLOCK_P)
            for r in tl.static_range(0, BLOCK_B, ARGMAX_ROWS):
                seqs = pid_b * BLOCK_B + r + tl.arange(0, ARGMAX_ROWS)  # (ARGMAX_ROWS,)
                s_ok = seqs < B
                both = s_ok[:, None] & (parts < n_parts)[None, :]
                where = part_ptr + seqs[:, None] * n_parts + parts[None, :]  # (ARGMAX_ROWS, BLOCK_P)
                tops = tl.load(where, mask=both, other=float("-inf"), volatile=True)
                tops = tl.where(tops == tops, tops, float("-inf"))  # a NaN logit never wins
                where_best = seqs * n_parts + tl.argmax(tops, 1)  # (ARGMAX_ROWS,) where each best part's row lies
                token = tl.load(part_ptr + B * n_parts + where_best, mask=s_ok, other=0.0, volatile=True).to(tl.int64)
                token = tl.minimum(tl.maximum(token, 0), N - 1)  # always a token of the vocabulary
                tl.store(out_ptr + seqs * out_stride + pos + 1, token, mask=s_ok)
                tl.store(tok_ptr + seqs, token, mask=s_ok)
            tl.store(count_ptr + 1 + pid_b, 0)
            if tl.atomic_add(count_ptr, 1, sem="acq_rel") == tl.num_programs(0) - 1:  # the last row block
                tl.store(pos_ptr, pos + 1)
                tl.store(count_ptr, 0)
    else:
        where = y_ptr + rows[:, None] * N + outs[None, :]  # (BLOCK_B, BLOCK_N)
        if GELU:
            acc = gelu_tanh(acc)
        if RESIDUAL and K_SHARE < K:  # the shares' partial sums, added to the fp32 residual in any order
            tl.atomic_add(where, acc, mask=ok, sem="relaxed")
        else:
            if RESIDUAL:  # each element is read and written by this program alone
                acc += tl.load(where, mask=ok, other=0.0).to(tl.float32)
            tl.store(where, acc.to(y_ptr.dtype.element_ty), mask=ok)


@_jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, y_ptr, pos_ptr, pad_ptr, cache_stride, scale,
    K: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Attention of sequence ``program_id(0)``'s head ``program_id(1)``: its query (from ``q`` (B, K)) over its
    cached positions pad..pos (the online softmax, a block of positions at a time), written to ``y`` (B, K)."""
    b, head = tl.program_id(0), tl.program_id(1)
    n_head = K // HEAD_DIM
    d = tl.arange(0, HEAD_DIM)  # (HEAD_DIM,)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    pos, first = tl.load(pos_ptr), tl.load(pad_ptr + b)
    q = tl.load(q_ptr + b * K + head * HEAD_DIM + d) * scale  # (HEAD_DIM,)
    base = (b * n_head + head) * cache_stride
    m = tl.full([], -1e30, tl.float32)  # the running maximum of the scores
    total = tl.zeros([], tl.float32)  # the running sum of exp(score - m)
    acc = tl.zeros([HEAD_DIM], tl.float32)  # (HEAD_DIM,) the running weighted sum of values
    for start in range(0, pos + 1, BLOCK_L):
        at = start + tl.arange(0, BLOCK_L)  # (BLOCK_L,)
        ok = (at <= pos) & (at >= first)
        offs = base + at[:, None] * HEAD_DIM + d[None, :]  # (BLOCK_L, HEAD_DIM)
        k = tl.load(k_ptr + offs, mask=ok[:, None], other=0.0).to(tl.float32)  # (BLOCK_L, HEAD_DIM)
        v = tl.load(v_ptr + offs, mask=ok[:, None], other=0.0).to(tl.float32)  # (BLOCK_L, HEAD_DIM)
        m, total, acc = softmax_block(q, k, v, ok, m, total, acc)
    # a sequence that sees no position yet (pos < its padding: CUDA graphs' warm-up steps) gets zeros, not 0 / 0
    y = acc / tl.where(total > 0, total, 1.0)  # (HEAD_DIM,)
    tl.store(y_ptr + b * K + head * HEAD_DIM + d, y.to(y_ptr.dtype.element_ty))


def k_share(site: str, k: int) -> int:
    """Values of the summed dimension (``k`` of them) each program of product ``site`` sums over: ``k`` split
    ``SPLIT_K[site]`` ways, or all of ``k`` where that split would not cut it into whole tiles of ``BLOCK_K``."""
    split = SPLIT_K.get(site, 1)
    return k // split if k % (split * BLOCK_K) == 0 else k


class BatchedStep:
    """One greedy decode step of ``decoder`` for its whole batch in Triton kernels, with the interface of the
    Triton step (``triton_step.TritonStep``): calling it reads the tokens ``tok`` (B, 1) at position ``pos`` (1,),
    writes the keys and values at ``pos``, each sequence's next token at ``pos + 1`` of ``out`` (B, L) and into
    ``tok``, and advances ``pos``. Everything stays on the device, so steps can be captured in a CUDA graph.

    The decoder's caches must be set up (``Decoder.setup_caches``) before a step runs; its weights must be float.
    """

    def __init__(self, decoder, tok: torch.Tensor, pos: torch.Tensor, out: torch.Tensor):
        if triton is None:
            raise RuntimeError("The batched step needs Triton (it comes with PyTorch's CUDA builds).")
        if decoder.kv_int8:
            raise ValueError("The batched step reads a float KV cache.")
        if decoder.wte is not None:
            raise ValueError("The batched step reads the token embedding from the output layer's float weight.")
        self.decoder, self.tok, self.pos, self.out = decoder, tok, pos, out
        cfg, device, dtype = decoder.config, decoder.wpe.weight.device, decoder.wpe.weight.dtype
        b, c = decoder.batch, cfg.n_embd
        self.block_b = min(MAX_BLOCK_B, max(16, triton.next_power_of_2(b)))  # tl.dot takes at least 16 rows
        f32 = dict(device=device, dtype=torch.float32)
        self.x = torch.zeros(b, c, **f32)  # (B, C) the residual, summed in place
        self.q = torch.zeros(b, c, **f32)  # (B, C)
        self.att = torch.zeros(b, c, device=device, dtype=dtype)  # (B, C) the attention's output, before proj
        self.h = torch.zeros(b, 4 * c, device=device, dtype=dtype)  # (B, 4C) the MLP's hidden units, after GELU
        self.n_parts = triton.cdiv(cfg.vocab_size, BLOCK_N["head"])  # programs along the output layer's rows
        self.best = torch.zeros(2, b, self.n_parts, **f32)  # each program's best logit and row, per sequence
        # programs done: row blocks of the output layer (count[0]), and in each row block (count[1 + block])
        self.count = torch.zeros(1 + triton.cdiv(b, self.block_b), dtype=torch.int32, device=device)
        self.ieee = dtype == torch.float32
        self.pdl = PDL and device.type == "cuda" and bool(capability.pdl(capability.capability(device)))
        self.on_gpu = device.type == "cuda"  # the prefetch instruction runs on a GPU only, not in the interpreter

    def _linear(self, site, x, layer, y, *, ln=None, embed=False, qkv=None, gelu=False, residual=False):
        d, w = self.decoder, layer.weight
        n, k = w.shape
        b = d.batch
        kv = qkv or (w, w)
        share = k_share(site, k) if residual else k  # only products added to the residual sum in shares
        grid = (triton.cdiv(b, self.block_b), triton.cdiv(n, BLOCK_N[site]), k // share)
        warps = 8 if self.block_b * BLOCK_N[site] >= WIDE_TILE else NUM_WARPS
        es = w.element_size()
        _linear_kernel[grid](
            x, w, w if layer.bias is None else layer.bias, y, w if ln is None else ln.weight,
            w if ln is None else ln.bias, self.tok, self.pos, d.pad, d.wpe.weight, kv[0], kv[1],
            d.length * (k // d.config.n_head), self.q if qkv else self.best, self.n_parts, self.count, self.out,
            self.out.stride(0), b, n, 1e-5 if ln is None else ln.eps, w.data_ptr(),
            K=k, HEAD_DIM=k // d.config.n_head, LN=ln is not None, EMBED=embed, QKV=qkv is not None, GELU=gelu,
            RESIDUAL=residual, ARGMAX=site == "head", HAS_BIAS=layer.bias is not None, IEEE=self.ieee,
            PDL=self.pdl, BLOCK_B=self.block_b, BLOCK_N=BLOCK_N[site], BLOCK_K=BLOCK_K, K_SHARE=share,
            BLOCK_P=triton.next_power_of_2(self.n_parts), ARGMAX_ROWS=ARGMAX_ROWS,
            PREFETCH=PREFETCH and self.on_gpu, ES=es, LINES=triton.next_power_of_2(triton.cdiv(share * es, 128)),
            num_warps=warps,
            **({"launch_pdl": True} if self.pdl else {}),
        )  # fmt: skip

    def __call__(self) -> None:
        d, cfg = self.decoder, self.decoder.config
        c, head_dim = cfg.n_embd, cfg.n_embd // cfg.n_head
        pdl = {"launch_pdl": True} if self.pdl else {}
        for i, block in enumerate(d.blocks):
            cache = (block.cache.k, block.cache.v)  # (B, H, L, D) each
            source = d.head.weight if i == 0 else self.x  # the first layer gathers the tokens' embeddings
            self._linear("qkv", source, block.qkv, self.x, ln=block.ln_1, embed=i == 0, qkv=cache)
            _attention_kernel[(d.batch, cfg.n_head)](
                self.q, *cache, self.att, self.pos, d.pad, d.length * head_dim, 1 / math.sqrt(head_dim),
                K=c, HEAD_DIM=head_dim, BLOCK_L=BLOCK_L, PDL=self.pdl, num_warps=NUM_WARPS, **pdl,
            )  # fmt: skip
            self._linear("proj", self.att, block.proj, self.x, residual=True)
            self._linear("fc", self.x, block.fc, self.h, ln=block.ln_2, gelu=True)
            self._linear("out", self.h, block.out, self.x, residual=True)
        self._linear("head", self.x, d.head, self.x, ln=d.ln_f)  # writes tokens, not y
