"""The persistent decode step: GPT-2's whole greedy token in one Triton kernel launch (GPU, batch 1).

The Triton step (``triton_step.py``) runs 37 kernels a token. Each kernel boundary costs time that reads no
weights: the GPU starts the next kernel's programs only after the last program of the one before has finished,
so every boundary waits for the slowest program and then for the start of the next grid. This step launches
one grid per token instead, with one program per multiprocessor, and the programs stay: they walk through the
same stages as the 37 kernels (per layer the q, k, v product, the attention with the output projection, the
MLP; then the output layer), and between two stages they wait at a *grid barrier*: a count in GPU memory that
each program increments when it has finished a stage and polls until every program has arrived. A barrier
costs round trips to the GPU's L2 cache (about a microsecond each), not a kernel's end and start.

Memory is kept busy across the barriers in two ways. At the start of each layer, every program asks the L2
cache for its share of the *next* layer's weights (``_prefetch_layer``): those bytes stream in from the GPU's
memory while this layer computes and waits, and the next layer reads them from the L2 cache. And the small
weights a stage needs (LayerNorm parameters, biases, the attention's projection) are loaded before the
program waits, since no earlier stage writes them.

The stages' arithmetic is the Triton step's (LayerNorm inside each product, fp32 activations, atomic adds
where programs split a sum, the argmax finished by the last program); what changes is who runs it and how the
stages meet. All programs must run at once, or a barrier would wait for a program that cannot start: one
program per multiprocessor fits, unless other work holds the GPU. A barrier that cannot fill gives up after
``WAIT_LIMIT`` polls, later barriers no longer wait, and ``PersistentStep.check`` raises.

Each multiprocessor has its own L1 cache, which does not see what other multiprocessors write: everything a
program reads that another program wrote in the same launch (activations, the new keys and values) is loaded
with ``cache_modifier=".cg"`` (from the L2 cache, which all share).

Weights and caches are found through a table with one row per layer (``ADDRESS_COLUMNS``): each entry is the
tensor's offset, in elements, from the output layer's weight, since one kernel must find every layer's
tensors from the layer's number.

Triton's interpreter (``TRITON_INTERPRET=1``, the CPU tests) runs a grid's programs one after another, so a
barrier there would wait for programs that have not started: the step launches the kernel once per stage
instead (the kernel boundary is the barrier), which runs the stages' code; with one program, its own
barriers are counted and passed.

Status: its tokens equal the eager decoder's in the tests, in the interpreter and on an H100. Timed on an H100
(``python -m helpers.ladder --persistent``, ``python -m helpers.timeline``; recorded in ``results/recorded/``),
it was slower than the Triton step. Why is not measured yet; candidates are its grid barriers between every two
stages (each waits for the slowest program), and its one program a multiprocessor, where the Triton step's
kernels keep more programs, and more reads, in flight on each. So ``FastGPT2`` uses it only when asked
(``kernels="persistent"``); notebook 05 shows the profile.
"""

from __future__ import annotations

import math

import torch

from .triton_step import _jit, _layer_norm, gelu_tanh, softmax_block, store_qkv, tl, triton

# one row of the table per layer: each tensor's offset (elements) from the output layer's weight
ADDRESS_COLUMNS = (
    "ln_1.weight", "ln_1.bias", "qkv.weight", "qkv.bias", "cache.k", "cache.v", "proj.weight", "proj.bias",
    "ln_2.weight", "ln_2.bias", "fc.weight", "fc.bias", "out.weight", "out.bias",
)  # fmt: skip
_const = tl.constexpr if tl is not None else int  # names the kernels can read (Triton needs constexpr globals)
LN1_W, LN1_B, QKV_W, QKV_B, CACHE_K, CACHE_V, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, OUT_W, OUT_B = (
    _const(ADDRESS_COLUMNS.index(name)) for name in ADDRESS_COLUMNS
)
N_COLUMNS = _const(len(ADDRESS_COLUMNS))
STAGES_PER_LAYER = 3  # the q, k, v product; attention and the output projection; the MLP
# launch configuration
NUM_WARPS = 8  # warps per program (one program per multiprocessor)
CHUNK = 8  # rows of a weight matrix a program multiplies at a time (the q, k, v product and the MLP)
HEAD_TILE = 32  # rows of the output layer a program multiplies at a time
AHEAD = 4  # tiles of output-layer rows a program asks the L2 cache for ahead of the one it multiplies
BLOCK_L = 64  # cached positions per block of the attention's loop
WAIT_LIMIT = 1 << 22  # polls of a barrier before a program gives up (a few seconds of polling)
GAVE_UP = _const(1 << 30)  # added to the barrier's count by a program that gave up: later waits pass at once
PREFETCH = True  # ask the L2 cache for the next layer's weights while the current layer runs (GPU only)
INTERPRETED_PROGRAMS = 8  # programs in Triton's interpreter (the CPU tests), where no GPU sets them


@_jit
def _address(table, layer, column: tl.constexpr, base):
    """Where ``column`` of ``layer`` lies: ``base`` (the output layer's weight, a pointer) plus the table's
    offset. Offsets are multiples of 8 elements (16 bytes of bf16), and saying so lets the compiler load 16
    bytes per thread at a time, as it does from a kernel's pointer arguments."""
    return base + tl.multiple_of(tl.load(table + layer * N_COLUMNS + column), 8)


@_jit
def _arrive(counts_ptr):
    """This program has finished a stage: every thread's writes first (a barrier inside the program), then
    one atomic increment of the count that releases them to the programs that see the new count."""
    tl.debug_barrier()
    tl.atomic_add(counts_ptr, 1, sem="release", scope="gpu")


@_jit
def _wait(counts_ptr, target, LIMIT: tl.constexpr):
    """Poll the count (``counts[0]``) until it reaches ``target``, the arrivals of every program at every
    earlier stage (acquire: what they wrote before arriving is then visible here).

    If LIMIT polls (a few seconds of polling) see too few arrivals, some program could not start and the
    barrier would never fill: the program stops waiting and raises the flag ``counts[2]``; the first to raise it
    adds ``GAVE_UP`` to the count, which lets every later wait pass at once (the count stays that high until
    ``PersistentStep.check`` reads the flag). The tokens are then wrong, but the GPU is not left waiting, and
    ``check`` says so."""
    seen = tl.atomic_add(counts_ptr, 0, sem="acquire", scope="gpu")  # compiled as one acquiring load
    polls = 0
    while (seen < target) & (polls < LIMIT):
        seen = tl.atomic_add(counts_ptr, 0, sem="acquire", scope="gpu")
        polls += 1
    if seen < target:
        if tl.atomic_xchg(counts_ptr + 2, 1) == 0:  # the first to give up (more adds would overflow the count)
            tl.atomic_add(counts_ptr, GAVE_UP, sem="relaxed", scope="gpu")


@_jit
def _prefetch(address, n_bytes, pid, P: tl.constexpr, LINES: tl.constexpr):
    """Ask the GPU's L2 cache to fetch program ``pid``'s share (1/P) of the ``n_bytes`` at byte ``address``
    (an integer: the instruction takes a plain address), one 128-byte line per thread at a time. Nothing waits
    for it: the lines arrive while the program goes on, and later loads of them hit in the L2 cache."""
    n_bytes = tl.maximum(n_bytes, 0)
    share = tl.cdiv(tl.cdiv(n_bytes, P), 128) * 128
    lo = pid * share
    hi = tl.minimum(lo + share, n_bytes)
    for start in range(lo, hi, LINES * 128):
        offs = tl.minimum(start + tl.arange(0, LINES) * 128, hi - 1)  # (LINES,) one line per thread, in range
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1];", "=r,l", [address + offs], dtype=tl.int32, is_pure=False, pack=1
        )


@_jit
def _prefetch_layer(
    table, layer, pid, base_address, C: tl.constexpr, ES: tl.constexpr, P: tl.constexpr, LINES: tl.constexpr
):
    """Prefetch (``_prefetch``) the four weight matrices of ``layer`` (``ES`` bytes a value), spread over the
    P programs: each asks for 1/P of every matrix. ``base_address``: the output layer's weight, in bytes."""
    row = table + layer * N_COLUMNS
    _prefetch(base_address + tl.load(row + QKV_W) * ES, 3 * C * C * ES, pid, P, LINES)  # qkv.weight (3C, C)
    _prefetch(base_address + tl.load(row + PROJ_W) * ES, C * C * ES, pid, P, LINES)  # proj.weight (C, C)
    _prefetch(base_address + tl.load(row + FC_W) * ES, 4 * C * C * ES, pid, P, LINES)  # fc.weight (4C, C)
    _prefetch(base_address + tl.load(row + OUT_W) * ES, 4 * C * C * ES, pid, P, LINES)  # out.weight (C, 4C)


@_jit
def _qkv_stage(
    table, layer, pid, cols, col_ok, wte_ptr, wte_address, wpe_ptr, tok_ptr, pos_ptr, x_in, x_out, x2_ptr, q_ptr,
    counts_ptr, target, cache_stride, eps, C: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr,
    CHUNK: tl.constexpr, N_LAYER: tl.constexpr, ES: tl.constexpr, P: tl.constexpr, LINES: tl.constexpr,
    PREFETCH: tl.constexpr, SYNC: tl.constexpr, LIMIT: tl.constexpr,
):  # fmt: skip
    """LayerNorm + the q, k, v product for ROWS rows of this program, CHUNK at a time; k and v go into the
    cache at ``pos``. Program 0 also starts the attention's sum (``x2`` = residual + projection bias) and zeroes
    the MLP's. Before waiting, the program asks the L2 cache for its share of the next layer's weights."""
    f32 = tl.float32
    if PREFETCH:
        if layer + 1 < N_LAYER:
            _prefetch_layer(table, layer + 1, pid, wte_address, C, ES, P, LINES)
    gamma = tl.load(_address(table, layer, LN1_W, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    beta = tl.load(_address(table, layer, LN1_B, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    proj_b = tl.load(_address(table, layer, PROJ_B, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    if SYNC:
        _wait(counts_ptr, target, LIMIT)
    pos = tl.load(pos_ptr)
    if layer == 0:  # the token's embedding
        x = tl.load(wte_ptr + tl.load(tok_ptr) * C + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
        x += tl.load(wpe_ptr + pos * C + cols, mask=col_ok, other=0.0).to(f32)
    else:  # the residual the last layer's programs summed (".cg": from the L2 cache, see the module's text)
        x = tl.load(x_in + cols, mask=col_ok, other=0.0, cache_modifier=".cg")  # (BLOCK_K,)
    if pid == 0:
        tl.store(x2_ptr + cols, x + proj_b, mask=col_ok)
        tl.store(x_out + cols, tl.zeros_like(x), mask=col_ok)
    xn = _layer_norm(x, gamma, beta, col_ok, C, eps)  # (BLOCK_K,)
    w_ptr = _address(table, layer, QKV_W, wte_ptr)
    b_ptr = _address(table, layer, QKV_B, wte_ptr)
    k_ptr = _address(table, layer, CACHE_K, wte_ptr)
    v_ptr = _address(table, layer, CACHE_V, wte_ptr)
    for r in tl.static_range(0, ROWS, CHUNK):
        rows = pid * ROWS + r + tl.arange(0, CHUNK)  # (CHUNK,)
        row_ok = (r + tl.arange(0, CHUNK) < ROWS) & (rows < 3 * C)
        w = tl.load(w_ptr + rows[:, None] * C + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        y = tl.sum(w.to(f32) * xn[None, :], 1) + tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(f32)  # (CHUNK,)
        store_qkv(y, rows, row_ok, q_ptr, k_ptr, v_ptr, pos, cache_stride, C, HEAD_DIM)


@_jit
def _cached_block(q, k_ptr, v_ptr, start, pos, m, total, acc, HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr):
    """Positions start..start + BLOCK_L - 1 of a head's cache (those <= pos) into the online softmax."""
    at = start + tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    ok = at <= pos
    offs = at[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]  # (BLOCK_L, HEAD_DIM)
    k = tl.load(k_ptr + offs, mask=ok[:, None], other=0.0, cache_modifier=".cg").to(tl.float32)  # (BLOCK_L, HEAD_DIM)
    v = tl.load(v_ptr + offs, mask=ok[:, None], other=0.0, cache_modifier=".cg").to(tl.float32)  # (BLOCK_L, HEAD_DIM)
    return softmax_block(q, k, v, ok, m, total, acc)


@_jit
def _attend_cached(
    table, layer, wte_ptr, q_ptr, pos, head, cache_stride, scale,
    HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr, N_BLOCKS: tl.constexpr,
):  # fmt: skip
    """The attention of ``head`` of ``layer`` for the query in ``q`` over the cached positions 0..pos, in blocks
    of BLOCK_L positions (the online softmax, ``softmax_block``): its output (HEAD_DIM,), fp32. The query and the
    newest key and value were written by other programs of the same launch, so every load goes to the L2 cache
    (``.cg``). ``N_BLOCKS`` > 0: that many blocks, unrolled, so that all their loads can be in flight at once
    (positions past ``pos`` masked); 0: a loop over the blocks up to ``pos``."""
    d = tl.arange(0, HEAD_DIM)  # (HEAD_DIM,)
    q = tl.load(q_ptr + head * HEAD_DIM + d, cache_modifier=".cg") * scale  # (HEAD_DIM,)
    k_ptr = _address(table, layer, CACHE_K, wte_ptr) + head * cache_stride  # this head's cache (length, HEAD_DIM)
    v_ptr = _address(table, layer, CACHE_V, wte_ptr) + head * cache_stride
    m = tl.full([], -1e30, tl.float32)  # the running maximum of the scores
    total = tl.zeros([], tl.float32)  # the running sum of exp(score - m)
    acc = tl.zeros([HEAD_DIM], tl.float32)  # (HEAD_DIM,) the running weighted sum of values
    if N_BLOCKS > 0:
        for block in tl.static_range(N_BLOCKS):
            m, total, acc = _cached_block(q, k_ptr, v_ptr, block * BLOCK_L, pos, m, total, acc, HEAD_DIM, BLOCK_L)
    else:
        for start in range(0, pos + 1, BLOCK_L):
            m, total, acc = _cached_block(q, k_ptr, v_ptr, start, pos, m, total, acc, HEAD_DIM, BLOCK_L)
    return acc / total


@_jit
def _attention_stage(
    table, layer, pid, wte_ptr, pos_ptr, x2_ptr, q_ptr, counts_ptr, target, cache_stride, scale,
    C: tl.constexpr, HEAD_DIM: tl.constexpr, N_HEAD: tl.constexpr, SPLIT: tl.constexpr, ROWS: tl.constexpr,
    TILE: tl.constexpr, BLOCK_L: tl.constexpr, SYNC: tl.constexpr, LIMIT: tl.constexpr,
):  # fmt: skip
    """Attention of head ``pid // SPLIT`` over the cache (``_attend_cached``), times ROWS
    rows of that head's columns of the output projection, added to ``x2``. Programs beyond ``N_HEAD * SPLIT``
    have no rows: they compute the last head's attention again and add nothing."""
    f32 = tl.float32
    head = tl.minimum(pid // SPLIT, N_HEAD - 1)
    n_rows = (pid < N_HEAD * SPLIT).to(tl.int32) * ROWS  # ROWS, or 0 for programs beyond N_HEAD * SPLIT
    rows = (pid % SPLIT) * ROWS + tl.arange(0, TILE)  # (TILE,)
    row_ok = (tl.arange(0, TILE) < n_rows) & (rows < C)
    d = tl.arange(0, HEAD_DIM)  # (HEAD_DIM,)
    w = tl.load(
        _address(table, layer, PROJ_W, wte_ptr) + rows[:, None] * C + head * HEAD_DIM + d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )  # (TILE, HEAD_DIM): loaded before the wait, since no stage writes it
    if SYNC:
        _wait(counts_ptr, target, LIMIT)
    pos = tl.load(pos_ptr)
    att = _attend_cached(table, layer, wte_ptr, q_ptr, pos, head, cache_stride, scale, HEAD_DIM, BLOCK_L, 0)
    y = tl.sum(w.to(f32) * att[None, :], 1)  # (TILE,)
    tl.atomic_add(x2_ptr + rows, y, mask=row_ok, sem="relaxed", scope="gpu")


@_jit
def _mlp_stage(
    table, layer, pid, cols, col_ok, wte_ptr, x2_ptr, x_out, counts_ptr, target, eps,
    C: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr, SYNC: tl.constexpr, LIMIT: tl.constexpr,
):  # fmt: skip
    """GPT-2's MLP for ROWS hidden units, CHUNK at a time: ``gelu(LN(x2) @ fc.T + b)`` times the matching
    columns of ``out``, added to the layer's output residual; program 0 also adds ``x2 + out.bias``. Its two
    weight matrices are loaded after the wait, from the L2 cache when the prefetch has brought them."""
    f32 = tl.float32
    gamma = tl.load(_address(table, layer, LN2_W, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    beta = tl.load(_address(table, layer, LN2_B, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    out_b = tl.load(_address(table, layer, OUT_B, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    if SYNC:
        _wait(counts_ptr, target, LIMIT)
    x = tl.load(x2_ptr + cols, mask=col_ok, other=0.0, cache_modifier=".cg")  # (BLOCK_K,)
    xn = _layer_norm(x, gamma, beta, col_ok, C, eps)  # (BLOCK_K,)
    fc_w = _address(table, layer, FC_W, wte_ptr)
    fc_b = _address(table, layer, FC_B, wte_ptr)
    out_w = _address(table, layer, OUT_W, wte_ptr)
    y = tl.zeros_like(x)  # (BLOCK_K,)
    for r in tl.static_range(0, ROWS, CHUNK):
        hid = pid * ROWS + r + tl.arange(0, CHUNK)  # (CHUNK,)
        hid_ok = (r + tl.arange(0, CHUNK) < ROWS) & (hid < 4 * C)
        both = hid_ok[:, None] & col_ok[None, :]  # (CHUNK, BLOCK_K)
        w_in = tl.load(fc_w + hid[:, None] * C + cols[None, :], mask=both, other=0.0)  # (CHUNK, BLOCK_K)
        h = tl.sum(w_in.to(f32) * xn[None, :], 1) + tl.load(fc_b + hid, mask=hid_ok, other=0.0).to(f32)  # (CHUNK,)
        h = tl.where(hid_ok, gelu_tanh(h), 0.0)  # (CHUNK,) GPT-2's tanh GELU
        # out's columns for these hidden units, read as rows of CHUNK neighbours (contiguous in memory)
        w_out = tl.load(out_w + cols[:, None] * (4 * C) + hid[None, :], mask=both.T, other=0.0)  # (BLOCK_K, CHUNK)
        y += tl.sum(w_out.to(f32) * h[None, :], 1)  # (BLOCK_K,)
    if pid == 0:
        y += x + out_b
    tl.atomic_add(x_out + cols, y, mask=col_ok, sem="relaxed", scope="gpu")


@_jit
def _head_stage(
    table, pid, cols, col_ok, wte_ptr, wte_address, lnf_w_ptr, lnf_b_ptr, x_in, tok_ptr, pos_ptr, out_ptr, best_ptr,
    counts_ptr, target, eps, V, C: tl.constexpr, P: tl.constexpr, ROWS: tl.constexpr, TILE: tl.constexpr,
    AHEAD: tl.constexpr, BLOCK_P: tl.constexpr, ES: tl.constexpr, LINES: tl.constexpr, PREFETCH: tl.constexpr,
    SYNC: tl.constexpr, LIMIT: tl.constexpr,
):  # fmt: skip
    """The output layer for ROWS rows of this program, TILE at a time (with PREFETCH, AHEAD tiles ahead in the
    L2 cache), and its best logit and row; the last program to finish picks the token, writes it at ``pos + 1``
    of ``out`` and into ``tok``, advances ``pos`` and sets the barrier's count and the programs done back to 0.
    Then each program asks the L2 cache for its share of the first layer's weights, which the next token reads
    first."""
    f32 = tl.float32
    first = pid * ROWS
    last = tl.minimum(first + ROWS, V)  # this program's rows are first..last-1 (none if first >= V)
    if PREFETCH:
        n_ahead = tl.minimum(first + AHEAD * TILE, last) - first  # the first AHEAD tiles' rows
        _prefetch(wte_address + first * C * ES, n_ahead * C * ES, 0, 1, LINES)
    gamma = tl.load(lnf_w_ptr + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    beta = tl.load(lnf_b_ptr + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    if SYNC:
        _wait(counts_ptr, target, LIMIT)
    x = tl.load(x_in + cols, mask=col_ok, other=0.0, cache_modifier=".cg")  # (BLOCK_K,)
    xn = _layer_norm(x, gamma, beta, col_ok, C, eps)  # (BLOCK_K,)
    best = tl.full([], float("-inf"), f32)
    best_at = tl.zeros([], tl.int32)
    for t in range(0, ROWS, TILE):  # a loop the compiler keeps rolled: one tile's registers at a time
        if PREFETCH:
            ahead = first + t + AHEAD * TILE  # the tile AHEAD tiles on: ask the L2 cache for it now
            n_ahead = tl.minimum(ahead + TILE, last) - ahead  # its rows (none past the last)
            _prefetch(wte_address + ahead * C * ES, n_ahead * C * ES, 0, 1, LINES)
        rows = first + t + tl.arange(0, TILE)  # (TILE,)
        ok = rows < last
        w = tl.load(wte_ptr + rows[:, None] * C + cols[None, :], mask=ok[:, None] & col_ok[None, :], other=0.0)
        y = tl.where(ok, tl.sum(w.to(f32) * xn[None, :], 1), float("-inf"))  # (TILE,) logits
        top = tl.max(y, 0)
        better = top > best  # strictly: among equal logits the first row wins, as in torch.argmax
        best_at = tl.where(better, first + t + tl.argmax(y, 0), best_at)
        best = tl.where(better, top, best)
    tl.store(best_ptr + pid, best)
    tl.store(best_ptr + P + pid, best_at.to(f32))  # exact below 2**24
    tl.debug_barrier()  # every thread's stores before the count (released by the atomic)
    if tl.atomic_add(counts_ptr + 1, 1, sem="acq_rel", scope="gpu") == P - 1:  # the last program: the token
        at = tl.arange(0, BLOCK_P)
        bests = tl.load(best_ptr + at, mask=at < P, other=float("-inf"), volatile=True)  # (BLOCK_P,)
        token = tl.load(best_ptr + P + tl.argmax(bests, 0), volatile=True).to(tl.int64)
        pos = tl.load(pos_ptr)
        tl.store(out_ptr + pos + 1, token)
        tl.store(tok_ptr, token)
        tl.store(pos_ptr, pos + 1)
        tl.store(counts_ptr + 1, 0)
        if tl.load(counts_ptr + 2, volatile=True) == 0:  # (after a barrier gave up, the count stays high)
            tl.store(counts_ptr, 0)  # every program has passed its last wait of this token: the next starts at 0
    if PREFETCH:
        _prefetch_layer(table, 0, pid, wte_address, C, ES, P, LINES)


@_jit
def _step_kernel(
    table, wte_ptr, wte_address, wpe_ptr, lnf_w_ptr, lnf_b_ptr, tok_ptr, pos_ptr, out_ptr, x_ptr, x2_ptr, q_ptr,
    best_ptr, counts_ptr, stage_lo, stage_hi, cache_stride, scale, eps, V,
    N_LAYER: tl.constexpr, STAGES: tl.constexpr, C: tl.constexpr, HEAD_DIM: tl.constexpr, N_HEAD: tl.constexpr,
    P: tl.constexpr, QKV_ROWS: tl.constexpr, ATT_SPLIT: tl.constexpr, ATT_ROWS: tl.constexpr,
    ATT_TILE: tl.constexpr, MLP_ROWS: tl.constexpr, HEAD_ROWS: tl.constexpr, CHUNK: tl.constexpr,
    HEAD_TILE: tl.constexpr, AHEAD: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr, ES: tl.constexpr, LINES: tl.constexpr, PREFETCH: tl.constexpr, SYNC: tl.constexpr,
    LIMIT: tl.constexpr,
):  # fmt: skip
    """Stages ``stage_lo`` to ``stage_hi - 1`` of one token, run by program ``program_id(0)`` of ``P``.

    Stage ``STAGES * layer`` is the layer's q, k, v product, the next its attention, the next its MLP, and
    stage ``STAGES * N_LAYER`` the output layer. With ``SYNC`` the programs meet at a grid barrier between
    stages: before stage ``s`` every program waits until the count reaches ``s * P`` (each of the ``P`` programs
    adds 1 after each stage); stage 0 waits for nothing. Residuals: ``x`` (2, C) holds a layer's input and
    output in turn, ``x2`` the residual after attention. ``wte_ptr``: the output layer's weight (tied to the
    token embedding), from which the table's offsets count; ``wte_address``: the same as an integer, for the
    prefetch instruction.
    """
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)  # (BLOCK_K,): the residual's width, padded to a power of 2
    col_ok = cols < C
    for stage in range(stage_lo, stage_hi):
        layer = stage // STAGES
        step_in_layer = stage - STAGES * layer  # 0: q, k, v; 1: attention; 2: MLP
        x_in = x_ptr + (layer % 2) * C  # this layer's input residual
        x_out = x_ptr + ((layer + 1) % 2) * C  # its output, summed by the MLP's programs
        target = stage * P
        if layer == N_LAYER:
            _head_stage(
                table, pid, cols, col_ok, wte_ptr, wte_address, lnf_w_ptr, lnf_b_ptr, x_in, tok_ptr, pos_ptr,
                out_ptr, best_ptr, counts_ptr, target, eps, V, C, P, HEAD_ROWS, HEAD_TILE, AHEAD, BLOCK_P, ES,
                LINES, PREFETCH, SYNC, LIMIT,
            )  # fmt: skip
        elif step_in_layer == 0:
            _qkv_stage(
                table, layer, pid, cols, col_ok, wte_ptr, wte_address, wpe_ptr, tok_ptr, pos_ptr, x_in, x_out,
                x2_ptr, q_ptr, counts_ptr, target, cache_stride, eps, C, HEAD_DIM, QKV_ROWS, CHUNK, N_LAYER, ES, P,
                LINES, PREFETCH, SYNC, LIMIT,
            )  # fmt: skip
        elif step_in_layer == 1:
            _attention_stage(
                table, layer, pid, wte_ptr, pos_ptr, x2_ptr, q_ptr, counts_ptr, target, cache_stride, scale,
                C, HEAD_DIM, N_HEAD, ATT_SPLIT, ATT_ROWS, ATT_TILE, BLOCK_L, SYNC, LIMIT,
            )  # fmt: skip
        else:
            _mlp_stage(
                table, layer, pid, cols, col_ok, wte_ptr, x2_ptr, x_out, counts_ptr, target, eps, C, MLP_ROWS, CHUNK,
                SYNC, LIMIT,
            )  # fmt: skip
        if SYNC and layer < N_LAYER:
            _arrive(counts_ptr)


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
    table holds where they lie (a step made before ``setup_caches`` is called again reads the old caches). Its
    weights must be float (the kernel takes no int8). After steps have
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
        if decoder.batch != 1 or decoder.kv_int8:
            raise ValueError("The persistent step decodes one sequence (batch 1) over a float KV cache.")
        p = n_programs or programs(device)
        if p < n_head:
            raise ValueError(f"The persistent step needs at least one program per head ({n_head}); got {p}.")
        self.sync = device.type == "cuda" if sync is None else sync
        if self.sync and device.type == "cuda" and p > programs(device):
            raise ValueError(
                f"{p} programs cannot all run at once on a GPU with {programs(device)} multiprocessors: the grid "
                "barriers would wait for programs that cannot start."
            )
        rows = {  # rows (or hidden units) per program in each stage
            "qkv": triton.cdiv(3 * c, p), "att": triton.cdiv(c, p // n_head), "mlp": triton.cdiv(4 * c, p),
            "head": triton.cdiv(cfg.vocab_size, p),
        }  # fmt: skip
        self.num_warps = NUM_WARPS
        self.meta = dict(
            N_LAYER=cfg.n_layer, STAGES=STAGES_PER_LAYER, C=c, HEAD_DIM=c // n_head, N_HEAD=n_head, P=p,
            QKV_ROWS=rows["qkv"], ATT_SPLIT=p // n_head, ATT_ROWS=rows["att"],
            ATT_TILE=triton.next_power_of_2(rows["att"]), MLP_ROWS=rows["mlp"], HEAD_ROWS=rows["head"], CHUNK=CHUNK,
            HEAD_TILE=min(HEAD_TILE, triton.next_power_of_2(rows["head"])), AHEAD=AHEAD,
            BLOCK_K=triton.next_power_of_2(c), BLOCK_L=BLOCK_L, BLOCK_P=triton.next_power_of_2(p),
            ES=decoder.head.weight.element_size(), LINES=32 * self.num_warps,
            PREFETCH=device.type == "cuda" and PREFETCH,  # the interpreter runs no GPU instructions
            SYNC=self.sync, LIMIT=WAIT_LIMIT,
        )  # fmt: skip
        self.table = address_table(decoder, "persistent")  # (n_layer, len(ADDRESS_COLUMNS))
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
            self.tok, self.pos, self.out, self.x, self.x2, self.q, self.best, self.counts, lo, hi, self.cache_stride,
            self.scale, d.ln_f.eps, d.config.vocab_size, num_warps=self.num_warps, **self.meta,
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
        raise_if_gave_up(
            self.counts, self.counts, f"The persistent step's {self.meta['P']} programs did not all run at once"
        )


def raise_if_gave_up(counts: torch.Tensor, reset: torch.Tensor, what: str) -> None:
    """The one-launch steps' check: raise if a wait gave up (the flag ``counts[2]``) in the steps run so far,
    after zeroing ``reset`` (the flag, and the counts the give-up raised), so that the next steps wait again.
    ``what`` says in the message what went wrong. Reading the flag waits for the GPU, so the generator
    calls this once a generation, not once a token."""
    if counts[2].item():
        reset.zero_()
        raise RuntimeError(
            f"{what}: a wait gave up and the tokens are wrong. Other work on the same GPU "
            "can cause this. Use kernels=True (one kernel per stage) instead."
        )


def address_table(decoder, step: str) -> torch.Tensor:
    """The table the one-launch steps find each layer's tensors in: each tensor of ``ADDRESS_COLUMNS``, one row
    per layer, as an offset in elements from the output layer's weight (the kernels' ``wte_ptr``), on the
    decoder's device. ``step`` names the step in the error raised when an offset is not a multiple of 8."""
    base, size = decoder.head.weight.data_ptr(), decoder.head.weight.element_size()
    gaps = [[_tensor(block, name).data_ptr() - base for name in ADDRESS_COLUMNS] for block in decoder.blocks]
    if any(gap % (8 * size) for row in gaps for gap in row):
        raise ValueError(f"The {step} step needs each tensor to start a multiple of 8 elements from the others.")
    return torch.tensor(gaps, dtype=torch.int64, device=decoder.head.weight.device) // size  # (n_layer, columns)


def _tensor(block, name: str) -> torch.Tensor:
    """The tensor ``name`` (a column of ``ADDRESS_COLUMNS``) of a block, contiguous as the kernel reads it."""
    owner, attr = name.split(".")
    t = getattr(getattr(block, owner), attr)
    if not t.is_contiguous():
        raise ValueError(f"The one-launch steps read {name} as a contiguous tensor; this one is not.")
    return t
