"""The persistent decode step: GPT-2's whole greedy token in one Triton kernel launch (GPU, batch 1).

The Triton step (``triton_step.py``) runs 37 kernels a token. Each kernel boundary costs time that reads no
weights: the GPU starts the next kernel's programs only after the last program of the one before has finished,
so every boundary waits for the slowest program and then for the start of the next grid. This step launches
one grid per token instead, with as many programs as the GPU can keep resident (one per multiprocessor), and
the programs stay: they walk through the same stages as the 37 kernels (per layer the q, k, v product, the
attention with the output projection, the MLP; then the output layer), and between two stages they wait at a
*grid barrier*, a counter in GPU memory that each program increments when it has finished a stage and that
each program polls until every program has arrived. A barrier costs a round trip to the GPU's L2 cache (about a
microsecond), not a kernel's end and start. And before waiting, a program already issues the loads of the
weights its next stage needs, which depend on no earlier stage: the weights stream in while it waits.

The stages' arithmetic is the Triton step's (LayerNorm inside each product, fp32 activations, atomic adds
where programs split a sum, the argmax finished by the last program); what changes is who runs it and how the
stages meet. All programs must be resident at once, or a barrier would wait forever for a program that cannot
start: hence one program per multiprocessor, which always fits.

Triton's interpreter (``TRITON_INTERPRET=1``, the CPU tests) runs a grid's programs one after another, so a
barrier there would wait forever: the step launches the kernel once per stage instead (``SYNC=False``; the
kernel boundary is the barrier), which runs exactly the stages' code, and the GPU tests check the barriers.

Weights and caches are reached through a table of addresses, one row per layer (``ADDRESS_COLUMNS``), since
a single kernel must find every layer's tensors by the layer's number.

Status: the stages and the barrier's counting are tested in the interpreter (one program meeting its own
barriers; more programs one launch per stage), and the kernel compiles for Hopper without spilling registers;
it has not yet been run or timed on a GPU, so ``FastGPT2`` uses it only when asked (``kernels="persistent"``).
A barrier that cannot fill gives up after ``WAIT_LIMIT`` polls instead of hanging the GPU (``check``).
"""

from __future__ import annotations

import math

import torch

from .triton_step import _jit, _layer_norm, tl, triton

# one row of the address table per layer: where each of the layer's tensors lies in GPU memory
ADDRESS_COLUMNS = (
    "ln_1.weight", "ln_1.bias", "qkv.weight", "qkv.bias", "cache.k", "cache.v", "proj.weight", "proj.bias",
    "ln_2.weight", "ln_2.bias", "fc.weight", "fc.bias", "out.weight", "out.bias",
)  # fmt: skip
STAGES_PER_LAYER = 3  # the q, k, v product; attention and the output projection; the MLP
# launch configuration: warps per program, and output-layer rows per tile (a program walks its rows tile by tile)
NUM_WARPS = 8
HEAD_TILE = 32
CHUNK = 8  # rows of a weight matrix a program multiplies at a time (the q, k, v product and the MLP)
AHEAD = 4  # tiles of output-layer rows a program asks the L2 cache for ahead of the one it multiplies
BLOCK_L = 64  # cached positions per block of the attention's loop
WAIT_LIMIT = 1 << 22  # polls of a barrier before a program gives up (about a microsecond each)
PREFETCH = True  # ask the L2 cache for the next layer's weights while the current layer runs (GPU only)
INTERPRETED_PROGRAMS = 8  # programs per stage in Triton's interpreter (the CPU tests), where no GPU sets them


@_jit
def _address(table, layer, column: tl.constexpr, base):
    """Column ``column`` of ``layer``'s row of the address table: ``base`` (a pointer) plus the offset stored
    there, in elements. Offsets are multiples of 8 (16 bytes of bf16), and saying so lets the compiler load
    16 bytes per thread at a time, as it does from a kernel's pointer arguments."""
    return base + tl.multiple_of(tl.load(table + layer * 14 + column), 8)


@_jit
def _arrive(sync_ptr):
    """This program has finished a stage: every thread's writes first (a barrier in the program), then one
    atomic increment that releases them to the programs that see the new count."""
    tl.debug_barrier()
    tl.atomic_add(sync_ptr, 1, sem="release", scope="gpu")


@_jit
def _wait(sync_ptr, target, LIMIT: tl.constexpr):
    """Poll the count until ``target`` programs have arrived (acquire: what they wrote is then visible here).

    A program that polls LIMIT times in vain (seconds) stops waiting and raises the flag after the two counts:
    some program could not start, so the barrier would never fill. The token is then wrong, but the GPU is
    not left waiting forever, and ``PersistentStep.check`` turns the flag into an error that says so."""
    polls = 0
    while (tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu") < target) & (polls < LIMIT):
        polls += 1
    if polls == LIMIT:
        tl.atomic_xchg(sync_ptr + 2, 1)


@_jit
def _prefetch(addr, n_bytes, pid, P: tl.constexpr, LINES: tl.constexpr):
    """Ask the GPU's L2 cache to fetch program ``pid``'s share (1/P) of the ``n_bytes`` at address ``addr`` (an
    int64), one 128-byte line per thread at a time. Nothing waits for it: the lines arrive while the program
    goes on, and later loads of them are served by the L2 cache instead of the GPU's memory."""
    share = tl.cdiv(tl.cdiv(n_bytes, P), 128) * 128
    lo = pid * share
    hi = tl.minimum(lo + share, n_bytes)
    for start in range(lo, hi, LINES * 128):
        offs = tl.minimum(start + tl.arange(0, LINES) * 128, hi - 1)  # (LINES,) one line per thread
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1];", "=r,l", [addr + offs], dtype=tl.int32, is_pure=False, pack=1
        )


@_jit
def _prefetch_layer(table, layer, pid, C: tl.constexpr, ES: tl.constexpr, P: tl.constexpr, LINES: tl.constexpr):
    """Prefetch (``_prefetch``) the four weight matrices of ``layer``, ``ES`` bytes a value, spread over the
    P programs: each asks for 1/P of every matrix."""
    _prefetch(tl.load(table + layer * 14 + 2), 3 * C * C * ES, pid, P, LINES)  # qkv.weight (3C, C)
    _prefetch(tl.load(table + layer * 14 + 6), C * C * ES, pid, P, LINES)  # proj.weight (C, C)
    _prefetch(tl.load(table + layer * 14 + 10), 4 * C * C * ES, pid, P, LINES)  # fc.weight (4C, C)
    _prefetch(tl.load(table + layer * 14 + 12), 4 * C * C * ES, pid, P, LINES)  # out.weight (C, 4C)


@_jit
def _qkv_stage(
    table, layer, pid, cols, col_ok, wte_ptr, wpe_ptr, tok_ptr, pos_ptr, x_in, x_out, x2_ptr, q_ptr, sync_ptr, target,
    cache_stride, eps, C: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr,
    N_LAYER: tl.constexpr, ES: tl.constexpr, P: tl.constexpr, LINES: tl.constexpr, PREFETCH: tl.constexpr,
    SYNC: tl.constexpr, LIMIT: tl.constexpr,
):  # fmt: skip
    """LayerNorm + the q, k, v product for ROWS rows of this program, CHUNK at a time; k and v go into the
    cache at ``pos``. Program 0 also starts the attention's sum (``x2`` = residual + projection bias) and zeroes
    the MLP's. Before waiting, the program asks the L2 cache for its share of the next layer's weights."""
    f32 = tl.float32
    if PREFETCH:
        if layer + 1 < N_LAYER:
            _prefetch_layer(table, layer + 1, pid, C, ES, P, LINES)
    gamma = tl.load(_address(table, layer, 0, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)
    beta = tl.load(_address(table, layer, 1, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)
    proj_b = tl.load(_address(table, layer, 7, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)
    if SYNC:
        _wait(sync_ptr, target, LIMIT)
    pos = tl.load(pos_ptr)
    if layer == 0:  # the token's embedding
        x = tl.load(wte_ptr + tl.load(tok_ptr) * C + cols, mask=col_ok, other=0.0).to(f32)
        x += tl.load(wpe_ptr + pos * C + cols, mask=col_ok, other=0.0).to(f32)
    else:
        x = tl.load(x_in + cols, mask=col_ok, other=0.0, cache_modifier=".cg")  # (BLOCK_K,)
    if pid == 0:
        tl.store(x2_ptr + cols, x + proj_b, mask=col_ok)
        tl.store(x_out + cols, tl.zeros_like(x), mask=col_ok)
    xn = _layer_norm(x, gamma, beta, col_ok, C, eps)  # (BLOCK_K,)
    w_ptr = _address(table, layer, 2, wte_ptr)
    b_ptr = _address(table, layer, 3, wte_ptr)
    k_ptr = _address(table, layer, 4, wte_ptr)
    v_ptr = _address(table, layer, 5, wte_ptr)
    for r in tl.static_range(0, ROWS, CHUNK):
        rows = pid * ROWS + r + tl.arange(0, CHUNK)  # (CHUNK,)
        row_ok = (r + tl.arange(0, CHUNK) < ROWS) & (rows < 3 * C)
        w = tl.load(w_ptr + rows[:, None] * C + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        y = tl.sum(w.to(f32) * xn[None, :], 1) + tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(f32)  # (CHUNK,)
        which = rows // C  # 0: q, 1: k, 2: v
        j = rows - which * C
        head = j // HEAD_DIM
        at = head * cache_stride + pos * HEAD_DIM + (j - head * HEAD_DIM)  # (CHUNK,) places in the cache
        tl.store(q_ptr + j, y, mask=row_ok & (which == 0))
        tl.store(k_ptr + at, y.to(k_ptr.dtype.element_ty), mask=row_ok & (which == 1))
        tl.store(v_ptr + at, y.to(v_ptr.dtype.element_ty), mask=row_ok & (which == 2))


@_jit
def _attention_stage(
    table, layer, pid, wte_ptr, pos_ptr, x2_ptr, q_ptr, sync_ptr, target, cache_stride, scale,
    C: tl.constexpr, HEAD_DIM: tl.constexpr, N_HEAD: tl.constexpr, SPLIT: tl.constexpr, ROWS: tl.constexpr,
    TILE: tl.constexpr, BLOCK_L: tl.constexpr, SYNC: tl.constexpr, LIMIT: tl.constexpr,
):  # fmt: skip
    """Attention of head ``pid // SPLIT`` over the cache (the online softmax, as in ``triton_step``), times ROWS
    rows of that head's columns of the output projection, added to ``x2``. Programs beyond ``N_HEAD * SPLIT``
    have no rows: they only meet the barrier."""
    f32 = tl.float32
    head = tl.minimum(pid // SPLIT, N_HEAD - 1)
    n_rows = (pid < N_HEAD * SPLIT).to(tl.int32) * ROWS
    rows = (pid % SPLIT) * ROWS + tl.arange(0, TILE)  # (TILE,)
    row_ok = (tl.arange(0, TILE) < n_rows) & (rows < C)
    d = tl.arange(0, HEAD_DIM)
    w = tl.load(
        _address(table, layer, 6, wte_ptr) + rows[:, None] * C + head * HEAD_DIM + d[None, :],
        mask=row_ok[:, None] & (d[None, :] < HEAD_DIM),
        other=0.0,
    )  # (TILE, HEAD_DIM), loaded before the wait
    if SYNC:
        _wait(sync_ptr, target, LIMIT)
    pos = tl.load(pos_ptr)
    q = tl.load(q_ptr + head * HEAD_DIM + d, cache_modifier=".cg") * scale  # (HEAD_DIM,)
    k_ptr = _address(table, layer, 4, wte_ptr)
    v_ptr = _address(table, layer, 5, wte_ptr)
    m = tl.full([], -1e30, f32)
    total = tl.zeros([], f32)
    acc = tl.zeros([HEAD_DIM], f32)
    for start in range(0, pos + 1, BLOCK_L):  # blocks of the cached positions 0..pos
        at = start + tl.arange(0, BLOCK_L)  # (BLOCK_L,)
        ok = at <= pos
        offs = head * cache_stride + at[:, None] * HEAD_DIM + d[None, :]  # (BLOCK_L, HEAD_DIM)
        ok2 = ok[:, None] & (d[None, :] < HEAD_DIM)
        k = tl.load(k_ptr + offs, mask=ok2, other=0.0, cache_modifier=".cg").to(f32)
        v = tl.load(v_ptr + offs, mask=ok2, other=0.0, cache_modifier=".cg").to(f32)
        s = tl.where(ok, tl.sum(k * q[None, :], 1), -1e30)  # (BLOCK_L,) scores
        top = tl.maximum(m, tl.max(s, 0))
        p = tl.where(ok, tl.exp(s - top), 0.0)
        shrink = tl.exp(m - top)
        total = total * shrink + tl.sum(p, 0)
        acc = acc * shrink + tl.sum(p[:, None] * v, 0)
        m = top
    y = tl.sum(w.to(f32) * (acc / total)[None, :], 1)  # (TILE,)
    tl.atomic_add(x2_ptr + rows, y, mask=row_ok, sem="relaxed", scope="gpu")


@_jit
def _mlp_stage(
    table, layer, pid, cols, col_ok, wte_ptr, x2_ptr, x_out, sync_ptr, target, eps,
    C: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr, SYNC: tl.constexpr, LIMIT: tl.constexpr,
):  # fmt: skip
    """GPT-2's MLP for ROWS hidden units, CHUNK at a time: ``gelu(LN(x2) @ fc.T + b)`` times the matching
    columns of ``out``, added to the layer's output residual; program 0 also adds ``x2 + out.bias``."""
    f32 = tl.float32
    gamma = tl.load(_address(table, layer, 8, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)
    beta = tl.load(_address(table, layer, 9, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)
    out_b = tl.load(_address(table, layer, 13, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)
    if SYNC:
        _wait(sync_ptr, target, LIMIT)
    x = tl.load(x2_ptr + cols, mask=col_ok, other=0.0, cache_modifier=".cg")  # (BLOCK_K,)
    xn = _layer_norm(x, gamma, beta, col_ok, C, eps)
    fc_w = _address(table, layer, 10, wte_ptr)
    fc_b = _address(table, layer, 11, wte_ptr)
    out_w = _address(table, layer, 12, wte_ptr)
    y = tl.zeros_like(x)
    for r in tl.static_range(0, ROWS, CHUNK):
        hid = pid * ROWS + r + tl.arange(0, CHUNK)  # (CHUNK,)
        hid_ok = (r + tl.arange(0, CHUNK) < ROWS) & (hid < 4 * C)
        both = hid_ok[:, None] & col_ok[None, :]
        w_in = tl.load(fc_w + hid[:, None] * C + cols[None, :], mask=both, other=0.0)  # (CHUNK, BLOCK_K)
        h = tl.sum(w_in.to(f32) * xn[None, :], 1) + tl.load(fc_b + hid, mask=hid_ok, other=0.0).to(f32)
        u = 0.7978845608028654 * (h + 0.044715 * h * h * h)  # GPT-2's tanh GELU, tanh(u) = 1 - 2 / (exp(2u) + 1)
        h = tl.where(hid_ok, 0.5 * h * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)), 0.0)  # (CHUNK,)
        w_out = tl.load(out_w + cols[:, None] * (4 * C) + hid[None, :], mask=both.T, other=0.0)  # (BLOCK_K, CHUNK)
        y += tl.sum(w_out.to(f32) * h[None, :], 1)  # (BLOCK_K,): out's columns for these hidden units, 16 bytes a row
    if pid == 0:
        y += x + out_b
    tl.atomic_add(x_out + cols, y, mask=col_ok, sem="relaxed", scope="gpu")


@_jit
def _head_stage(
    table, pid, cols, col_ok, wte_ptr, wte_addr, lnf_w_ptr, lnf_b_ptr, x_in, tok_ptr, pos_ptr, out_ptr, part_ptr,
    sync_ptr, done_ptr, target, eps, V, C: tl.constexpr, P: tl.constexpr, ROWS: tl.constexpr, TILE: tl.constexpr,
    AHEAD: tl.constexpr, BLOCK_P: tl.constexpr, ES: tl.constexpr, LINES: tl.constexpr, PREFETCH: tl.constexpr,
    SYNC: tl.constexpr, LIMIT: tl.constexpr,
):  # fmt: skip
    """The output layer for ROWS rows of this program, TILE at a time (with PREFETCH, AHEAD tiles ahead in the
    L2 cache), and its best logit and row; the last program to finish picks the token, writes it at ``pos + 1``
    of ``out`` and into ``tok``, advances ``pos`` and sets both counts back to 0. Then each program asks the L2
    cache for its share of the first layer's weights, which the next token reads first."""
    f32 = tl.float32
    first = pid * ROWS
    last = tl.minimum(first + ROWS, V)  # this program's rows are first..last-1
    if PREFETCH:
        _prefetch(wte_addr + first * C * ES, (tl.minimum(first + AHEAD * TILE, last) - first) * C * ES, 0, 1, LINES)
    gamma = tl.load(lnf_w_ptr + cols, mask=col_ok, other=0.0).to(f32)
    beta = tl.load(lnf_b_ptr + cols, mask=col_ok, other=0.0).to(f32)
    if SYNC:
        _wait(sync_ptr, target, LIMIT)
    x = tl.load(x_in + cols, mask=col_ok, other=0.0, cache_modifier=".cg")  # (BLOCK_K,)
    xn = _layer_norm(x, gamma, beta, col_ok, C, eps)
    best = tl.full([], float("-inf"), f32)
    best_at = tl.zeros([], tl.int32)
    for t in range(0, ROWS, TILE):  # a loop the compiler does not unroll: one tile's registers at a time
        if PREFETCH:
            ahead = first + t + AHEAD * TILE
            _prefetch(wte_addr + ahead * C * ES, tl.maximum(tl.minimum(ahead + TILE, last) - ahead, 0) * C * ES, 0, 1,
                      LINES)  # fmt: skip
        rows = first + t + tl.arange(0, TILE)  # (TILE,)
        ok = rows < last
        w = tl.load(wte_ptr + rows[:, None] * C + cols[None, :], mask=ok[:, None] & col_ok[None, :], other=0.0)
        y = tl.where(ok, tl.sum(w.to(f32) * xn[None, :], 1), float("-inf"))  # (TILE,) logits
        top = tl.max(y, 0)
        better = top > best  # strictly: among equal logits the first row wins, as in torch.argmax
        best_at = tl.where(better, first + t + tl.argmax(y, 0), best_at)
        best = tl.where(better, top, best)
    tl.store(part_ptr + pid, best)
    tl.store(part_ptr + P + pid, best_at.to(f32))  # exact below 2**24
    tl.debug_barrier()  # every thread's stores before the count (released by the atomic)
    if tl.atomic_add(done_ptr, 1, sem="acq_rel", scope="gpu") == P - 1:  # the last program: the token
        at = tl.arange(0, BLOCK_P)
        bests = tl.load(part_ptr + at, mask=at < P, other=float("-inf"), volatile=True)
        token = tl.load(part_ptr + P + tl.argmax(bests, 0), volatile=True).to(tl.int64)
        pos = tl.load(pos_ptr)
        tl.store(out_ptr + pos + 1, token)
        tl.store(tok_ptr, token)
        tl.store(pos_ptr, pos + 1)
        tl.store(done_ptr, 0)
        tl.store(sync_ptr, 0)  # every program has passed every barrier of this token: the next starts at 0
    if PREFETCH:
        _prefetch_layer(table, 0, pid, C, ES, P, LINES)


@_jit
def _step_kernel(
    table, wte_ptr, wte_addr, wpe_ptr, lnf_w_ptr, lnf_b_ptr, tok_ptr, pos_ptr, out_ptr, x_ptr, x2_ptr, q_ptr,
    part_ptr, sync_ptr, done_ptr, stage_lo, stage_hi, cache_stride, scale, eps, V,
    N_LAYER: tl.constexpr, C: tl.constexpr, HEAD_DIM: tl.constexpr, N_HEAD: tl.constexpr, P: tl.constexpr,
    QKV_ROWS: tl.constexpr, ATT_SPLIT: tl.constexpr, ATT_ROWS: tl.constexpr, ATT_TILE: tl.constexpr,
    MLP_ROWS: tl.constexpr, HEAD_ROWS: tl.constexpr, CHUNK: tl.constexpr, HEAD_TILE: tl.constexpr,
    AHEAD: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, ES: tl.constexpr,
    LINES: tl.constexpr, PREFETCH: tl.constexpr, SYNC: tl.constexpr, LIMIT: tl.constexpr,
):  # fmt: skip
    """Stages ``stage_lo`` to ``stage_hi - 1`` of one token, run by program ``program_id(0)`` of ``P``.

    Stage ``3 * layer`` is the layer's q, k, v product, ``3 * layer + 1`` its attention, ``3 * layer + 2`` its
    MLP, and ``3 * N_LAYER`` the output layer. With ``SYNC`` the programs meet at a grid barrier between stages:
    before stage ``s`` every program waits until the count reaches ``s * P`` (each of the ``P`` programs added 1
    after each earlier stage). Residuals: ``x`` (2, C) holds a layer's input and output in turn, ``x2`` the
    residual after attention.
    """
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)  # (BLOCK_K,): the residual's width, padded to a power of 2
    col_ok = cols < C
    for stage in range(stage_lo, stage_hi):
        layer = stage // 3
        part = stage - 3 * layer
        x_in = x_ptr + (layer % 2) * C  # this layer's input residual
        x_out = x_ptr + ((layer + 1) % 2) * C  # its output, summed by the MLP's programs
        target = stage * P
        if layer == N_LAYER:
            _head_stage(
                table, pid, cols, col_ok, wte_ptr, wte_addr, lnf_w_ptr, lnf_b_ptr, x_in, tok_ptr, pos_ptr, out_ptr,
                part_ptr, sync_ptr, done_ptr, target, eps, V, C, P, HEAD_ROWS, HEAD_TILE, AHEAD, BLOCK_P, ES, LINES,
                PREFETCH, SYNC, LIMIT,
            )  # fmt: skip
        elif part == 0:
            _qkv_stage(
                table, layer, pid, cols, col_ok, wte_ptr, wpe_ptr, tok_ptr, pos_ptr, x_in, x_out, x2_ptr, q_ptr,
                sync_ptr, target, cache_stride, eps, C, HEAD_DIM, QKV_ROWS, CHUNK, N_LAYER, ES, P, LINES, PREFETCH,
                SYNC, LIMIT,
            )  # fmt: skip
        elif part == 1:
            _attention_stage(
                table, layer, pid, wte_ptr, pos_ptr, x2_ptr, q_ptr, sync_ptr, target, cache_stride, scale,
                C, HEAD_DIM, N_HEAD, ATT_SPLIT, ATT_ROWS, ATT_TILE, BLOCK_L, SYNC, LIMIT,
            )  # fmt: skip
        else:
            _mlp_stage(
                table, layer, pid, cols, col_ok, wte_ptr, x2_ptr, x_out, sync_ptr, target, eps, C, MLP_ROWS, CHUNK,
                SYNC, LIMIT,
            )  # fmt: skip
        if SYNC and layer < N_LAYER:
            _arrive(sync_ptr)


def programs(device: torch.device) -> int:
    """Programs of the persistent grid: one per multiprocessor on a GPU (all resident at once)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETED_PROGRAMS


class PersistentStep:
    """One greedy decode step of ``decoder`` at batch 1 in one launch of a persistent Triton kernel, with the
    interface of the Triton step (``triton_step.TritonStep``): calling it reads the token ``tok`` (1, 1) at
    position ``pos`` (1,), writes the keys and values at ``pos``, the next token at ``pos + 1`` of ``out`` (1, L)
    and into ``tok``, and advances ``pos``; everything stays on the device, so steps can be captured in a CUDA
    graph. ``n_programs``: the grid (default: one program per multiprocessor, ``programs``). ``sync``: meet at
    grid barriers in one launch (default on a GPU); ``False`` launches the kernel once per stage instead, which
    Triton's interpreter needs when it runs more than one program (it runs them one after another).

    The decoder's caches must be set up for batch 1 (``Decoder.setup_caches``) before the step is made: the
    address table holds where they lie. Its weights must be float (the kernel takes no int8). After steps have
    run, ``check()`` raises if a barrier gave up waiting.
    """

    def __init__(
        self, decoder, tok: torch.Tensor, pos: torch.Tensor, out: torch.Tensor, n_programs: int | None = None,
        sync: bool | None = None,
    ):  # fmt: skip
        if triton is None:
            raise RuntimeError("The persistent step needs Triton (it comes with PyTorch's CUDA builds).")
        self.decoder, self.tok, self.pos, self.out = decoder, tok, pos, out
        cfg, device = decoder.config, decoder.wpe.weight.device
        c, n_head = cfg.n_embd, cfg.n_head
        p = n_programs or programs(device)
        if p < n_head:
            raise ValueError(f"The persistent step needs at least one program per head ({n_head}); got {p}.")
        self.sync = device.type == "cuda" if sync is None else sync
        rows = {  # rows (or hidden units) per program in each stage
            "qkv": triton.cdiv(3 * c, p), "att": triton.cdiv(c, p // n_head), "mlp": triton.cdiv(4 * c, p),
            "head": triton.cdiv(cfg.vocab_size, p),
        }  # fmt: skip
        self.num_warps = NUM_WARPS
        self.meta = dict(
            N_LAYER=cfg.n_layer, C=c, HEAD_DIM=c // n_head, N_HEAD=n_head, P=p, QKV_ROWS=rows["qkv"],
            ATT_SPLIT=p // n_head, ATT_ROWS=rows["att"], ATT_TILE=triton.next_power_of_2(rows["att"]),
            MLP_ROWS=rows["mlp"], HEAD_ROWS=rows["head"], CHUNK=CHUNK,
            HEAD_TILE=min(HEAD_TILE, triton.next_power_of_2(rows["head"])), AHEAD=AHEAD,
            BLOCK_K=triton.next_power_of_2(c), BLOCK_L=BLOCK_L, BLOCK_P=triton.next_power_of_2(p),
            ES=decoder.head.weight.element_size(), LINES=32 * self.num_warps,
            PREFETCH=device.type == "cuda" and PREFETCH,  # the interpreter runs no GPU instructions
            SYNC=self.sync, LIMIT=WAIT_LIMIT,
        )  # fmt: skip
        # each tensor's place as an offset in elements from the output layer's weight (the kernel's ``wte_ptr``)
        base, size = decoder.head.weight.data_ptr(), decoder.head.weight.element_size()
        gaps = [[_tensor(block, name).data_ptr() - base for name in ADDRESS_COLUMNS] for block in decoder.blocks]
        if any(gap % (8 * size) for row in gaps for gap in row):
            raise ValueError("The persistent step needs each tensor to start a multiple of 8 elements from the others.")
        self.table = torch.tensor(gaps, dtype=torch.int64, device=device) // size  # (n_layer, 14)
        f32 = dict(device=device, dtype=torch.float32)
        self.x = torch.zeros(2, c, **f32)  # a layer's input and output residuals, in turn
        self.x2 = torch.zeros(c, **f32)  # the residual after attention (the MLP's input)
        self.q = torch.zeros(c, **f32)
        self.best = torch.zeros(2, p, **f32)  # each program's best logit and its row
        self.counts = torch.zeros(3, dtype=torch.int32, device=device)  # barrier count, programs done, gave up
        self.cache_stride = decoder.length * (c // n_head)
        self.scale = 1 / math.sqrt(c // n_head)

    def _launch(self, lo: int, hi: int) -> None:
        d = self.decoder
        _step_kernel[(self.meta["P"],)](
            self.table, d.head.weight, d.head.weight.data_ptr(), d.wpe.weight, d.ln_f.weight, d.ln_f.bias,
            self.tok, self.pos, self.out, self.x, self.x2, self.q, self.best, self.counts, self.counts[1:], lo, hi,
            self.cache_stride, self.scale, d.ln_f.eps, d.config.vocab_size, num_warps=self.num_warps, **self.meta,
        )  # fmt: skip

    def __call__(self) -> None:
        n_stages = STAGES_PER_LAYER * self.decoder.config.n_layer + 1
        if self.sync:
            self._launch(0, n_stages)  # the whole token in one launch
        else:
            for stage in range(n_stages):  # one launch per stage: the kernel boundary is the barrier
                self._launch(stage, stage + 1)

    def check(self) -> None:
        """Raise if a barrier gave up waiting in the steps run so far (the tokens they made are wrong)."""
        if self.counts[2].item():
            self.counts[2].zero_()
            raise RuntimeError(
                f"The persistent step's programs did not all run at once ({self.meta['P']} programs): a grid "
                "barrier gave up waiting and the tokens are wrong. Another program sharing the GPU, or a GPU with "
                "fewer multiprocessors than the grid, can cause this. Use kernels=True (one kernel per stage)."
            )


def _tensor(block, name: str) -> torch.Tensor:
    """The tensor ``name`` (a column of ``ADDRESS_COLUMNS``) of a block, contiguous as the kernel reads it."""
    owner, attr = name.split(".")
    t = getattr(getattr(block, owner), attr)
    if not t.is_contiguous():
        raise ValueError(f"The persistent step reads {name} as a contiguous tensor; this one is not.")
    return t
