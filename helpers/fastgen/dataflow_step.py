"""The dataflow decode step: GPT-2's whole greedy token in one Triton kernel launch of many small tasks (GPU, batch 1).

The Triton step (``triton_step.py``) runs a token as 37 kernels; the persistent step (``persistent_step.py``) as one
grid of one program per multiprocessor that meets at a grid barrier between every two stages. This step launches one
grid per token too, but with one program per *task*: small programs like the Triton step's (its 37 kernels'
programs, the attention's split in more and smaller tasks), numbered in the order the token needs them (layer by
layer: the q, k, v product's tasks, then the attention's, then the MLP's; last the output layer's). The GPU runs as
many programs at once as fit and starts the next as one ends, so while the programs of one stage compute, the
programs of the next stages are already running: each loads its weights, which no task writes, and then waits until
the stage it depends on is done.

A stage is done when all its tasks have finished: each task adds 1 to its stage's count in GPU memory when it
has written its results, and a task of the next stage polls that count until it reaches the number of tasks of
the stage (``STAGE_COUNTS``; else one count of all tasks, polled until it holds every earlier stage's). So a
task waits for the stage before it, not for a kernel's end and the next kernel's start, and the weights of the
stages ahead stream in from memory meanwhile.

A task that waits occupies its place on the GPU, so the tasks it waits for must already be running: each
program takes its task's number from a ticket counter when it starts (an atomic add), not from its place in the
grid, so every task with a smaller number has been taken by a program that is running or done. A wait that
has polled ``WAIT_LIMIT`` times without seeing its target gives up and flags it, and ``DataflowStep.check``
raises, instead of the GPU hanging.

Each multiprocessor has its own L1 cache, which does not see what other multiprocessors write: everything a task
reads that another task wrote in the same launch (activations, the new keys and values) is loaded with
``cache_modifier=".cg"`` (from the L2 cache, which all share).

Triton's interpreter (``TRITON_INTERPRET=1``, the CPU tests) runs a grid's programs one after another, in the
order of their tickets: every wait then finds its stage done.
"""

from __future__ import annotations

import math

import torch

from .persistent_step import (
    CACHE_K,
    CACHE_V,
    FC_B,
    FC_W,
    GAVE_UP,
    LN1_B,
    LN1_W,
    LN2_B,
    LN2_W,
    OUT_B,
    OUT_W,
    PROJ_B,
    PROJ_W,
    QKV_B,
    QKV_W,
    _address,
    _attend_cached,
    address_table,
    raise_if_gave_up,
)
from .triton_step import _jit, _layer_norm, gelu_tanh, store_qkv, tl, triton

# Rows (or hidden units) a task computes in each stage, and warps a program: the Triton step's settings, but
# 64 rows an attention task (144 tasks a layer, against 36 with 256). A throwaway sweep on an H100 (2026-12-07,
# GPT-2 124M, bf16, 32 + 128 tokens, medians of 5; not recorded) found every setting tried slower than the Triton
# step, timed in the same runs at 5,500-5,534 tokens/s: these 3,868-4,077; 8 warps 3,154; MLP tasks of 8 or 32
# units 3,527-3,607; attention tasks of 32 rows 3,267; one count of all tasks instead of a count per stage,
# tasks numbered by place instead of ticket, and sleeping 100 or 500 ns between polls: within 3% of these.
TASK_ROWS = {"qkv": 8, "attn": 64, "mlp": 16, "head": 16}
NUM_WARPS = 4
ATTN_BLOCK = 256  # cached positions per block of the attention (all blocks up to the cache's length unrolled)
TICKET = True  # tasks numbered by a ticket counter (False: by the program's place in the grid)
STAGE_COUNTS = True  # a count per stage, which the next stage's tasks wait on (False: one count of all tasks)
BACKOFF = 0  # nanoseconds a waiting task sleeps between polls (GPU only; 0: none)
WAIT_LIMIT = 1 << 22  # polls of a count before a task gives up (a few seconds of polling)


@_jit
def _wait(count_ptr, target, flag_ptr, LIMIT: tl.constexpr, BACKOFF: tl.constexpr):
    """Poll the count at ``count_ptr`` until it reaches ``target`` (acquire: what the counted tasks wrote before
    arriving is then visible here), sleeping BACKOFF nanoseconds between polls (0: none). After LIMIT polls
    the task stops waiting and raises the flag; the first to raise it adds ``GAVE_UP`` to the count, so other
    waits on it pass (once: more such adds would overflow the count)."""
    seen = tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")  # compiled as one acquiring load
    polls = 0
    while (seen < target) & (polls < LIMIT):
        if BACKOFF > 0:
            tl.inline_asm_elementwise(
                "nanosleep.u32 $1;", "=r,r", [polls * 0 + BACKOFF], dtype=tl.int32, is_pure=False, pack=1
            )
        seen = tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")
        polls += 1
    if seen < target:
        if tl.atomic_xchg(flag_ptr, 1) == 0:
            tl.atomic_add(count_ptr, GAVE_UP, sem="relaxed", scope="gpu")


@_jit
def _arrive(counts_ptr):
    """This task has written its results: every thread's writes first, then one atomic increment that
    releases them to the tasks that see the new count."""
    tl.debug_barrier()
    tl.atomic_add(counts_ptr, 1, sem="release", scope="gpu")


@_jit
def _qkv_task(
    table, layer, task, wte_ptr, wpe_ptr, tok_ptr, pos_ptr, x_in, x_out, x2_ptr, q_ptr, wait_ptr, target, flag_ptr,
    cache_stride, eps, C: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
    LIMIT: tl.constexpr, BACKOFF: tl.constexpr,
):  # fmt: skip
    """LayerNorm + ROWS rows of the q, k, v product (k and v into the cache at ``pos``). Task 0 also starts the
    attention's sum (``x2`` = residual + projection bias) and zeroes the MLP's (the layer's output)."""
    f32 = tl.float32
    cols = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    col_ok = cols < C
    rows = task * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    row_ok = rows < 3 * C
    w = tl.load(
        _address(table, layer, QKV_W, wte_ptr) + rows[:, None] * C + cols[None, :],
        mask=row_ok[:, None] & col_ok[None, :],
        other=0.0,
    )  # (ROWS, BLOCK_K): weights first, before the wait (no task writes them)
    bias = tl.load(_address(table, layer, QKV_B, wte_ptr) + rows, mask=row_ok, other=0.0).to(f32)  # (ROWS,)
    gamma = tl.load(_address(table, layer, LN1_W, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    beta = tl.load(_address(table, layer, LN1_B, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    pos = tl.load(pos_ptr)
    if layer == 0:  # the token's embedding (written by the previous launch: no wait)
        x = tl.load(wte_ptr + tl.load(tok_ptr) * C + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
        x += tl.load(wpe_ptr + pos * C + cols, mask=col_ok, other=0.0).to(f32)
    else:  # the residual the last layer's MLP tasks summed
        _wait(wait_ptr, target, flag_ptr, LIMIT, BACKOFF)
        x = tl.load(x_in + cols, mask=col_ok, other=0.0, cache_modifier=".cg")  # (BLOCK_K,)
    if task == 0:
        proj_b = tl.load(_address(table, layer, PROJ_B, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
        tl.store(x2_ptr + cols, x + proj_b, mask=col_ok)
        tl.store(x_out + cols, tl.zeros_like(x), mask=col_ok)
    y = tl.sum(w.to(f32) * _layer_norm(x, gamma, beta, col_ok, C, eps)[None, :], 1) + bias  # (ROWS,)
    store_qkv(
        y, rows, row_ok, q_ptr, _address(table, layer, CACHE_K, wte_ptr), _address(table, layer, CACHE_V, wte_ptr),
        pos, cache_stride, C, HEAD_DIM,
    )  # fmt: skip


@_jit
def _attention_task(
    table, layer, task, wte_ptr, pos_ptr, x2_ptr, q_ptr, wait_ptr, target, flag_ptr, cache_stride, scale,
    C: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, BLOCK_L: tl.constexpr, N_BLOCKS: tl.constexpr,
    LIMIT: tl.constexpr, BACKOFF: tl.constexpr,
):  # fmt: skip
    """Attention of one head over the cache (``_attend_cached``, its blocks unrolled) times ROWS rows of that
    head's columns of the output projection, added to ``x2``. Task ``t`` takes head ``t // SPLIT`` and block of
    rows ``t % SPLIT``."""
    f32 = tl.float32
    split = (C + ROWS - 1) // ROWS  # tasks per head
    head = task // split
    d = tl.arange(0, HEAD_DIM)  # (HEAD_DIM,)
    rows = (task - head * split) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    row_ok = rows < C
    w = tl.load(
        _address(table, layer, PROJ_W, wte_ptr) + rows[:, None] * C + head * HEAD_DIM + d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )  # (ROWS, HEAD_DIM), before the wait
    _wait(wait_ptr, target, flag_ptr, LIMIT, BACKOFF)
    pos = tl.load(pos_ptr)
    att = _attend_cached(table, layer, wte_ptr, q_ptr, pos, head, cache_stride, scale, HEAD_DIM, BLOCK_L, N_BLOCKS)
    y = tl.sum(w.to(f32) * att[None, :], 1)  # (ROWS,)
    tl.atomic_add(x2_ptr + rows, y, mask=row_ok, sem="relaxed", scope="gpu")


@_jit
def _mlp_task(
    table, layer, task, wte_ptr, x2_ptr, x_out, wait_ptr, target, flag_ptr, eps,
    C: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, LIMIT: tl.constexpr, BACKOFF: tl.constexpr,
):  # fmt: skip
    """GPT-2's MLP for ROWS hidden units: ``gelu(LN(x2) @ fc.T + b)`` times the matching columns of ``out``,
    added to the layer's output residual; task 0 also adds ``x2 + out.bias``."""
    f32 = tl.float32
    cols = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    col_ok = cols < C
    hid = task * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    hid_ok = hid < 4 * C
    both = hid_ok[:, None] & col_ok[None, :]  # (ROWS, BLOCK_K)
    w_in = tl.load(
        _address(table, layer, FC_W, wte_ptr) + hid[:, None] * C + cols[None, :], mask=both, other=0.0
    )  # (ROWS, BLOCK_K)
    w_out = tl.load(
        _address(table, layer, OUT_W, wte_ptr) + cols[None, :] * (4 * C) + hid[:, None], mask=both, other=0.0
    )  # (ROWS, BLOCK_K): out's columns for these hidden units
    b_in = tl.load(_address(table, layer, FC_B, wte_ptr) + hid, mask=hid_ok, other=0.0).to(f32)  # (ROWS,)
    gamma = tl.load(_address(table, layer, LN2_W, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    beta = tl.load(_address(table, layer, LN2_B, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    _wait(wait_ptr, target, flag_ptr, LIMIT, BACKOFF)
    x = tl.load(x2_ptr + cols, mask=col_ok, other=0.0, cache_modifier=".cg")  # (BLOCK_K,)
    h = tl.sum(w_in.to(f32) * _layer_norm(x, gamma, beta, col_ok, C, eps)[None, :], 1) + b_in  # (ROWS,)
    h = tl.where(hid_ok, gelu_tanh(h), 0.0)  # (ROWS,) GPT-2's tanh GELU
    y = tl.sum(w_out.to(f32) * h[:, None], 0)  # (BLOCK_K,)
    if task == 0:
        y += x + tl.load(_address(table, layer, OUT_B, wte_ptr) + cols, mask=col_ok, other=0.0).to(f32)
    tl.atomic_add(x_out + cols, y, mask=col_ok, sem="relaxed", scope="gpu")


@_jit
def _head_task(
    task, wte_ptr, lnf_w_ptr, lnf_b_ptr, x_in, tok_ptr, pos_ptr, out_ptr, best_ptr, counts_ptr, wait_ptr, target, eps,
    V, C: tl.constexpr, ROWS: tl.constexpr, TASKS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    N_COUNTS: tl.constexpr, BLOCK_S: tl.constexpr,
    LIMIT: tl.constexpr, BACKOFF: tl.constexpr,
):  # fmt: skip
    """The output layer for ROWS rows, and their best logit and row; the last head task to finish picks the
    token, writes it at ``pos + 1`` of ``out`` and into ``tok``, advances ``pos``, and sets the counts back to 0
    for the next token."""
    f32 = tl.float32
    cols = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    col_ok = cols < C
    rows = task * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    ok = rows < V
    w = tl.load(
        wte_ptr + rows[:, None] * C + cols[None, :], mask=ok[:, None] & col_ok[None, :], other=0.0
    )  # (ROWS, BLOCK_K)
    gamma = tl.load(lnf_w_ptr + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    beta = tl.load(lnf_b_ptr + cols, mask=col_ok, other=0.0).to(f32)  # (BLOCK_K,)
    _wait(wait_ptr, target, counts_ptr + 2, LIMIT, BACKOFF)
    x = tl.load(x_in + cols, mask=col_ok, other=0.0, cache_modifier=".cg")  # (BLOCK_K,)
    y = tl.sum(w.to(f32) * _layer_norm(x, gamma, beta, col_ok, C, eps)[None, :], 1)  # (ROWS,) logits
    y = tl.where(ok, y, float("-inf"))
    tl.store(best_ptr + task, tl.max(y, 0))
    tl.store(best_ptr + TASKS + task, (task * ROWS + tl.argmax(y, 0)).to(f32))  # exact below 2**24
    tl.debug_barrier()  # every thread's stores before the count (released by the atomic)
    if tl.atomic_add(counts_ptr + 1, 1, sem="acq_rel", scope="gpu") == TASKS - 1:  # the last head task
        at = tl.arange(0, BLOCK_P)  # (BLOCK_P,)
        bests = tl.load(best_ptr + at, mask=at < TASKS, other=float("-inf"), volatile=True)  # (BLOCK_P,)
        token = tl.load(best_ptr + TASKS + tl.argmax(bests, 0), volatile=True).to(tl.int64)
        pos = tl.load(pos_ptr)
        tl.store(out_ptr + pos + 1, token)
        tl.store(tok_ptr, token)
        tl.store(pos_ptr, pos + 1)
        tl.store(counts_ptr + 1, 0)
        if tl.load(counts_ptr + 2, volatile=True) == 0:  # (after a wait gave up, the counts stay high)
            tl.store(counts_ptr, 0)  # every other task has finished: the next token counts from 0
            stages = tl.arange(0, BLOCK_S)  # (BLOCK_S,)
            tl.store(counts_ptr + 4 + stages, tl.zeros([BLOCK_S], tl.int32), mask=stages < N_COUNTS)


@_jit
def _ticket(ticket_ptr, total):
    """This program's task number, taken from the ticket counter as the program starts (an atomic add): every
    smaller number has been taken by a program that is running or done, so the tasks a waiting task waits for
    are on the GPU already (a program's place in the grid promises no such order). The last of the launch's
    ``total`` tickets sets the counter back by ``total``, so the next launch counts from 0 again."""
    t = tl.atomic_add(ticket_ptr, 1, sem="relaxed", scope="gpu")
    if t == total - 1:
        tl.atomic_add(ticket_ptr, -total, sem="relaxed", scope="gpu")
    return t


@_jit
def _dataflow_kernel(
    table, wte_ptr, wpe_ptr, lnf_w_ptr, lnf_b_ptr, tok_ptr, pos_ptr, out_ptr, x_ptr, x2_ptr, q_ptr, best_ptr,
    counts_ptr, cache_stride, scale, eps, V,
    N_LAYER: tl.constexpr, C: tl.constexpr, HEAD_DIM: tl.constexpr, T_QKV: tl.constexpr, T_ATT: tl.constexpr,
    T_MLP: tl.constexpr, T_HEAD: tl.constexpr, QKV_ROWS: tl.constexpr, ATT_ROWS: tl.constexpr,
    MLP_ROWS: tl.constexpr, HEAD_ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr,
    N_BLOCKS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr, TICKET: tl.constexpr,
    STAGE_COUNTS: tl.constexpr, LIMIT: tl.constexpr, BACKOFF: tl.constexpr,
):  # fmt: skip
    """One task of the token: its number from the ticket counter ``counts[3]`` (or the program's place), then the stage
    and the part of it the number names. Tasks of a layer are numbered T_QKV q, k, v tasks, T_ATT attention
    tasks, T_MLP MLP tasks; after the last layer come T_HEAD output-layer tasks. ``counts``: tasks done (all
    stages; only without STAGE_COUNTS), output-layer tasks done, the flag of a wait that gave up, the ticket,
    then (STAGE_COUNTS) the tasks done of each stage: a task waits until the stage before it is done.
    ``x`` (2, C): a layer's input and output residuals in turn; ``x2``: the residual after attention."""
    T_LAYER = T_QKV + T_ATT + T_MLP
    if TICKET:
        t = _ticket(counts_ptr + 3, N_LAYER * T_LAYER + T_HEAD)
    else:
        t = tl.program_id(0)
    layer = tl.minimum(t // T_LAYER, N_LAYER)  # N_LAYER: the output layer's tasks (more than a layer's, often)
    r = t - layer * T_LAYER  # the task's number within its layer (or among the output layer's tasks)
    part = (r >= T_QKV).to(tl.int32) + (r >= T_QKV + T_ATT).to(tl.int32)  # 0: q, k, v; 1: attention; 2: MLP
    part = tl.where(layer < N_LAYER, part, 0)  # the output layer: one stage
    stage = 3 * layer + part  # (the output layer: 3 * N_LAYER)
    if STAGE_COUNTS:  # wait for the stage before, arrive at this one's count
        wait_ptr = counts_ptr + 4 + stage - 1  # (stage 0, the first layer's q, k, v, never waits)
        target = tl.where(part == 0, T_MLP, tl.where(part == 1, T_QKV, T_ATT))
        done_ptr = counts_ptr + 4 + stage
    else:  # one count of all tasks done: wait until it holds every earlier stage's
        wait_ptr = counts_ptr
        target = layer * T_LAYER + tl.where(part >= 1, T_QKV, 0) + tl.where(part == 2, T_ATT, 0)
        done_ptr = counts_ptr
    x_in = x_ptr + (layer % 2) * C  # this layer's input residual
    x_out = x_ptr + ((layer + 1) % 2) * C  # its output, summed by the MLP's tasks
    flag_ptr = counts_ptr + 2
    if layer == N_LAYER:
        _head_task(
            r, wte_ptr, lnf_w_ptr, lnf_b_ptr, x_in, tok_ptr, pos_ptr, out_ptr, best_ptr, counts_ptr, wait_ptr, target,
            eps, V, C, HEAD_ROWS, T_HEAD, BLOCK_K, BLOCK_P, 3 * N_LAYER, BLOCK_S, LIMIT, BACKOFF,
        )  # fmt: skip
    else:
        if part == 0:
            _qkv_task(
                table, layer, r, wte_ptr, wpe_ptr, tok_ptr, pos_ptr, x_in, x_out, x2_ptr, q_ptr, wait_ptr, target,
                flag_ptr, cache_stride, eps, C, HEAD_DIM, QKV_ROWS, BLOCK_K, LIMIT, BACKOFF,
            )  # fmt: skip
        elif part == 1:
            _attention_task(
                table, layer, r - T_QKV, wte_ptr, pos_ptr, x2_ptr, q_ptr, wait_ptr, target, flag_ptr, cache_stride,
                scale, C, HEAD_DIM, ATT_ROWS, BLOCK_L, N_BLOCKS, LIMIT, BACKOFF,
            )  # fmt: skip
        else:
            _mlp_task(
                table, layer, r - T_QKV - T_ATT, wte_ptr, x2_ptr, x_out, wait_ptr, target, flag_ptr, eps, C,
                MLP_ROWS, BLOCK_K, LIMIT, BACKOFF,
            )  # fmt: skip
        _arrive(done_ptr)


class DataflowStep:
    """One greedy decode step of ``decoder`` at batch 1 in one launch of the dataflow kernel, with the interface
    of the Triton step (``triton_step.TritonStep``): calling it reads the token ``tok`` (1, 1) at position ``pos``
    (1,), writes the keys and values at ``pos``, the next token at ``pos + 1`` of ``out`` (1, L) and into ``tok``,
    and advances ``pos``; everything stays on the device, so steps can be captured in a CUDA graph.

    The decoder's caches must be set up for batch 1 (``Decoder.setup_caches``) before the step is made (the
    table holds where they lie); its weights must be float. After steps have run, ``check()`` raises if a wait
    gave up.
    """

    def __init__(self, decoder, tok: torch.Tensor, pos: torch.Tensor, out: torch.Tensor):
        if triton is None:
            raise RuntimeError("The dataflow step needs Triton (it comes with PyTorch's CUDA builds).")
        if decoder.batch != 1 or decoder.kv_int8:
            raise ValueError("The dataflow step decodes one sequence (batch 1) over a float KV cache.")
        self.decoder, self.tok, self.pos, self.out = decoder, tok, pos, out
        cfg, device = decoder.config, decoder.wpe.weight.device
        c, n_head = cfg.n_embd, cfg.n_head
        head_dim = c // n_head
        rows = dict(TASK_ROWS)
        rows["attn"] = min(rows["attn"], triton.next_power_of_2(c))
        tasks = {
            "qkv": triton.cdiv(3 * c, rows["qkv"]), "attn": n_head * triton.cdiv(c, rows["attn"]),
            "mlp": triton.cdiv(4 * c, rows["mlp"]), "head": triton.cdiv(cfg.vocab_size, rows["head"]),
        }  # fmt: skip
        self.total = cfg.n_layer * (tasks["qkv"] + tasks["attn"] + tasks["mlp"]) + tasks["head"]
        block_l = min(ATTN_BLOCK, triton.next_power_of_2(decoder.length))
        self.num_warps = NUM_WARPS
        self.meta = dict(
            N_LAYER=cfg.n_layer, C=c, HEAD_DIM=head_dim, T_QKV=tasks["qkv"], T_ATT=tasks["attn"],
            T_MLP=tasks["mlp"], T_HEAD=tasks["head"], QKV_ROWS=rows["qkv"], ATT_ROWS=rows["attn"],
            MLP_ROWS=rows["mlp"], HEAD_ROWS=rows["head"], BLOCK_K=triton.next_power_of_2(c), BLOCK_L=block_l,
            N_BLOCKS=triton.cdiv(decoder.length, block_l), BLOCK_P=triton.next_power_of_2(tasks["head"]),
            BLOCK_S=triton.next_power_of_2(3 * cfg.n_layer), TICKET=TICKET, STAGE_COUNTS=STAGE_COUNTS,
            LIMIT=WAIT_LIMIT, BACKOFF=BACKOFF if device.type == "cuda" else 0,
        )  # fmt: skip
        self.table = address_table(decoder, "dataflow")  # (n_layer, len(ADDRESS_COLUMNS))
        f32 = dict(device=device, dtype=torch.float32)
        self.x = torch.zeros(2, c, **f32)  # a layer's input and output residuals, in turn
        self.x2 = torch.zeros(c, **f32)  # the residual after attention (the MLP's input)
        self.q = torch.zeros(c, **f32)
        self.best = torch.zeros(2, tasks["head"], **f32)  # each output-layer task's best logit and its row
        # tasks done, output-layer tasks done, gave up, ticket, then tasks done per stage (STAGE_COUNTS)
        self.counts = torch.zeros(4 + 3 * cfg.n_layer, dtype=torch.int32, device=device)
        self.cache_stride = decoder.length * head_dim
        self.scale = 1 / math.sqrt(head_dim)

    def __call__(self) -> None:
        d = self.decoder
        _dataflow_kernel[(self.total,)](
            self.table, d.head.weight, d.wpe.weight, d.ln_f.weight, d.ln_f.bias, self.tok, self.pos, self.out,
            self.x, self.x2, self.q, self.best, self.counts, self.cache_stride, self.scale, d.ln_f.eps,
            d.config.vocab_size, num_warps=self.num_warps, **self.meta,
        )  # fmt: skip

    def check(self) -> None:
        """Raise if a wait gave up in the steps run so far (the tokens they made are wrong)."""
        raise_if_gave_up(self.counts, self.counts, "The dataflow step's tasks did not all make progress")
