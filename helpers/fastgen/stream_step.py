"""The streaming decode step: GPT-2's whole greedy token in one CUDA kernel launch (GPU, batch 1, 16-bit weights).

The two one-launch Triton steps (``persistent_step``, ``dataflow_step``) were slower than the 37-kernel Triton
step. What they bring in ahead of the work is limited: the persistent step asks the L2 cache for the next
layer's weights, the dataflow step reads the weights of the programs already running. A program of Triton's
language (``triton.language``) cannot keep a ring of buffers in its multiprocessor's shared memory that
asynchronous copies fill several pieces ahead, across stages and across waits (Triton's experimental Gluon
dialect has such copies). CUDA C++ can: copies into shared memory (``cp.async``) run on while the threads
that issued them compute or wait.

So this step is written in CUDA C++ (``stream_step.cu``), compiled when first used by NVRTC (the runtime
compiler that comes with PyTorch's CUDA builds, 2.8 or newer: no compiler to install), and launched through
the CUDA driver. It needs compute capability 8.0 or newer and, with the default slots, the shared memory of a
Hopper GPU (``why_not`` says). Its design:

1. **A plan, made once** (``plan``): one block per multiprocessor. Each block gets a share of every stage: rows
   of each layer's q, k, v product, one head's attention with some rows of the projection, a slice of the MLP's
   hidden units, rows of the output layer. The host copies each block's share of the weights, in the order the
   block uses them, into one contiguous *stream*, cut into *pieces* that fit a slot of shared memory.
2. **The stream, copied ahead**: each block keeps ``SLOTS - 1`` pieces in flight while it computes on one, so the
   next layer's weights arrive while this layer's stages wait for each other.
3. **Stages meet at one count**: a block arrives (adds 1) when it has finished a stage, and the next stage waits
   until every block has arrived; the last block of the output layer picks the token and resets the count.

``simulate`` runs the same plan in PyTorch on any device, piece by piece in the kernel's order, reading the
weights from the packed stream: the CPU tests check the plan with it, and a reader can follow the kernel's
arithmetic in Python. A wait that does not fill (a block that could not start) gives up after ``WAIT_LIMIT``
polls, and ``StreamStep.check`` raises, rather than the GPU hanging.

Status: ``python -m helpers.timeline --record`` records its token on a GPU (``results/recorded/timeline--*.jsonl``)
with its blocks' own clocks (``PROFILE``, ``clock_shares``: the share of a token spent waiting for the other
blocks, setting up stages, computing on pieces, arriving, and between stages); notebook 05 prints them against
the Triton step's token. ``FastGPT2`` uses it only when asked (``kernels="stream"``).
"""

from __future__ import annotations

import ctypes
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .persistent_step import _tensor, raise_if_gave_up  # a block's tensor by name, checked contiguous; check()

SOURCE = Path(__file__).with_name("stream_step.cu")
# one row of the kernel's table per layer: the addresses of the layer's small tensors and its caches
COLUMNS = (
    "ln_1.weight", "ln_1.bias", "qkv.bias", "cache.k", "cache.v", "proj.bias", "ln_2.weight", "ln_2.bias",
    "fc.bias", "out.bias",
)  # fmt: skip
KINDS = ("qkv", "attn", "mlp", "head")  # a piece's kind: its number in the kernel is its place here
FIRST, LAST = 1, 2  # a piece's flags: it starts its stage, it ends its stage
PIECE_FIELDS = 8  # kind, layer, lo, hi, head, offset (elements), flags, unused
# launch configuration
NTHREADS = 256  # threads per block (one block per multiprocessor)
SLOTS = 4  # pieces of the stream in shared memory at once: one computed on, SLOTS - 1 arriving
SLOT_BYTES = 48 * 1024  # bytes of a slot (48 KiB), the most a piece holds
WAIT_LIMIT = 1 << 22  # polls of the count before a block gives up (a few seconds)
PROFILE_AT = 32  # PROFILE's clocks start at this word of counts: the 128-byte line after the one the waits poll
# Defines added to the kernel's text, to time a variant. Ablations leave a part out, and their tokens are wrong
# (timing only): NO_WAIT (waits pass at once), NO_COPY (no weights copied). Variants compute the same tokens:
# ARRIVE_RELEASE (arrive with one release add), COPY_BULK (1: one bulk copy a piece by one thread, Hopper's TMA,
# the default on compute capability 9.0 and later; 0: every thread's share in 16-byte cp.async copies, the default
# before), ROWS (rows a warp multiplies at once, 4 by default), COPY_FROM (with COPY_BULK 0; 32: warp 0, which
# arrives and waits, issues no copies, so its fence has none of its own to wait for), KV_GROUPS (1: the attention
# reads the cache coalesced, head size / 8 threads a position; one H100 run, 2026-12-07, passed its one-step tests
# and timed it shorter than 0, but the recorded profile is of 0, so 0 stays the default until a run records 1).
# PROFILE: every block writes its clock at each stage's wait and end (``StreamStep.profile``).
ABLATE: dict = {}


@dataclass
class Plan:
    """Which weights each block reads, in which order: ``pieces`` (blocks, max_pieces, PIECE_FIELDS) int32,
    ``n_pieces`` (blocks,) int32, and ``stream``, every block's weights packed one block after another."""

    pieces: torch.Tensor
    n_pieces: torch.Tensor
    stream: torch.Tensor


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``n`` rows in ``parts`` contiguous ranges whose sizes differ by at most one (some may be empty)."""
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def _chunks(lo: int, hi: int, most: int) -> list[tuple[int, int]]:
    """Rows lo..hi in pieces of at most ``most`` rows; an empty range is one empty piece (the block still waits
    and arrives)."""
    return [(a, min(a + most, hi)) for a in range(lo, hi, most)] or [(lo, lo)]


def plan(decoder, blocks: int, slot_bytes: int | None = None) -> Plan:
    """Cut the decoder's weights into each block's stream of pieces (see the module's docstring).

    Per layer, block ``b`` gets: rows ``_ranges(3C, blocks)[b]`` of the q, k, v product; attention items (a head
    and a range of the projection's rows: each head's C rows in ``ceil(blocks / H)`` ranges), every
    ``blocks``-th item from ``b``; hidden units ``_ranges(4C, blocks)[b]`` of the MLP, each unit's row of ``fc``
    followed by its column of ``out``; and last rows ``_ranges(vocab, blocks)[b]`` of the output layer.
    """
    slot_bytes = slot_bytes or SLOT_BYTES  # read when called, so that a changed setting counts
    cfg = decoder.config
    c, n_head = cfg.n_embd, cfg.n_head
    head_dim, hidden = c // n_head, decoder.blocks[0].fc.weight.shape[0]
    size = decoder.head.weight.element_size()
    rows_most = slot_bytes // (size * c)  # rows of C weights in a slot
    attn_most, units_most = slot_bytes // (size * head_dim), slot_bytes // (2 * size * c)
    if min(rows_most, attn_most, units_most) < 1:
        raise ValueError(f"A slot of {slot_bytes} bytes holds no row of {c} weights; use larger slots.")
    per_head = math.ceil(blocks / n_head)  # ranges of projection rows per head
    items = [(h, lo, hi) for h in range(n_head) for lo, hi in _ranges(c, per_head)]
    fields, parts, offset = [[] for _ in range(blocks)], [], 0

    def add(b, kind, layer, head, lo, hi, weights, first, last):
        nonlocal offset
        w = weights.reshape(-1)
        fields[b].append([KINDS.index(kind), layer, lo, hi, head, offset, first * FIRST | last * LAST, 0])
        parts.append(w)
        offset += w.numel()

    def add_rows(b, kind, layer, lo, hi, most, weights):  # rows lo..hi of ``weights`` in pieces: one stage
        ranges = _chunks(lo, hi, most)
        for i, (a, z) in enumerate(ranges):
            add(b, kind, layer, 0, a, z, weights[a:z], i == 0, i == len(ranges) - 1)

    units = [torch.stack([b.fc.weight, b.out.weight.T], 1) for b in decoder.blocks]  # (hidden, 2, C) a layer
    for b in range(blocks):
        for layer, block in enumerate(decoder.blocks):
            add_rows(b, "qkv", layer, *_ranges(3 * c, blocks)[b], rows_most, block.qkv.weight)
            proj, mine = block.proj.weight, items[b::blocks]
            if not mine:  # more blocks than items: an empty piece, so the block still waits and arrives
                add(b, "attn", layer, 0, 0, 0, proj[:0, :0], True, True)
            for j, (h, lo, hi) in enumerate(mine):  # one stage: FIRST on the block's first piece, LAST on its last
                ranges = _chunks(lo, hi, attn_most)
                for k, (a, z) in enumerate(ranges):
                    last = j == len(mine) - 1 and k == len(ranges) - 1
                    add(b, "attn", layer, h, a, z, proj[a:z, h * head_dim : (h + 1) * head_dim], j == k == 0, last)
            add_rows(b, "mlp", layer, *_ranges(hidden, blocks)[b], units_most, units[layer])  # fc's row, out's column
        add_rows(b, "head", 0, *_ranges(cfg.vocab_size, blocks)[b], rows_most, decoder.head.weight)
    if offset >= 2**31:
        raise ValueError("The kernel numbers the stream's elements in 31 bits; this model is too large for it.")
    max_pieces = max(len(f) for f in fields)
    pieces = torch.zeros(blocks, max_pieces, PIECE_FIELDS, dtype=torch.int64)
    for b, f in enumerate(fields):
        pieces[b, : len(f)] = torch.tensor(f)
    device = decoder.head.weight.device
    return Plan(
        pieces=pieces.to(torch.int32).to(device),
        n_pieces=torch.tensor([len(f) for f in fields], dtype=torch.int32, device=device),
        stream=torch.cat(parts),
    )


def _piece_weights(p: Plan, piece, c: int, head_dim: int) -> torch.Tensor:
    """A piece's weights as the kernel finds them in its slot: (rows, C), (rows, D) or (units, 2, C)."""
    kind, _, lo, hi, _, offset = (int(v) for v in piece[:6])
    shape = {0: (hi - lo, c), 1: (hi - lo, head_dim), 2: (hi - lo, 2, c), 3: (hi - lo, c)}[kind]
    return p.stream[offset : offset + math.prod(shape)].view(shape).float()


def simulate(p: Plan, decoder, tok: int, pos: int) -> tuple[torch.Tensor, int]:
    """One greedy step as the kernel computes it, in PyTorch: the stages in order, in each stage every block's
    pieces, each reading its weights from the packed stream. Returns the residual after the last layer (C,) and
    the token; writes the keys and values at ``pos`` into the decoder's caches, as the kernel does."""
    cfg, device = decoder.config, decoder.head.weight.device
    c, head_dim = cfg.n_embd, cfg.n_embd // cfg.n_head
    blocks = p.pieces.shape[0]
    pieces = [p.pieces[b, : p.n_pieces[b]].cpu() for b in range(blocks)]

    def stage(kind, layer):  # every block's pieces of one stage, in block order
        for b in range(blocks):
            for piece in pieces[b]:
                if int(piece[0]) == KINDS.index(kind) and (kind == "head" or int(piece[1]) == layer):
                    yield piece

    def ln(x, norm):
        return F.layer_norm(x, (c,), norm.weight.float(), norm.bias.float(), norm.eps)

    x = decoder.head.weight[tok].float() + decoder.wpe.weight[pos].float()  # (C,) the residual, in fp32 as the kernel
    for layer, block in enumerate(decoder.blocks):
        xs, q = ln(x, block.ln_1), torch.zeros(c, device=device)
        cache_k, cache_v = block.cache.k[0], block.cache.v[0]  # (H, L, D) each
        for piece in stage("qkv", layer):
            lo, hi = int(piece[2]), int(piece[3])
            y = _piece_weights(p, piece, c, head_dim) @ xs + block.qkv.bias[lo:hi].float()  # (rows,)
            for r, v in zip(range(lo, hi), y, strict=True):
                which, j = divmod(r, c)
                if which == 0:
                    q[j] = v
                else:
                    (cache_k if which == 1 else cache_v)[j // head_dim, pos, j % head_dim] = v
        x_mid = x + block.proj.bias.float()
        for piece in stage("attn", layer):
            lo, hi, h = int(piece[2]), int(piece[3]), int(piece[4])
            k, v = cache_k[h, : pos + 1].float(), cache_v[h, : pos + 1].float()  # (T, D) each
            weights = torch.softmax(k @ q[h * head_dim : (h + 1) * head_dim] / math.sqrt(head_dim), 0)  # (T,)
            x_mid[lo:hi] += _piece_weights(p, piece, c, head_dim) @ (weights @ v)
        xs, x_out = ln(x_mid, block.ln_2), x_mid + block.out.bias.float()
        for piece in stage("mlp", layer):
            lo, hi = int(piece[2]), int(piece[3])
            w = _piece_weights(p, piece, c, head_dim)  # (units, 2, C)
            g = F.gelu(w[:, 0] @ xs + block.fc.bias[lo:hi].float(), approximate="tanh")  # (units,)
            x_out += g @ w[:, 1]
        x = x_out
    xs, best = ln(x, decoder.ln_f), (-math.inf, 0)
    for piece in stage("head", 0):
        lo, hi = int(piece[2]), int(piece[3])
        if hi > lo:
            y = _piece_weights(p, piece, c, head_dim) @ xs  # (rows,)
            if y.max().item() > best[0]:
                best = (y.max().item(), lo + int(y.argmax()))
    return x, best[1]


def defines(decoder) -> dict:
    """The constants the kernel is compiled with, for this decoder's shape and dtype and the module's settings
    (``NTHREADS``, ``SLOTS``, ``SLOT_BYTES``, ``WAIT_LIMIT``, ``ABLATE``, read when called)."""
    cfg = decoder.config
    nthreads, slots, slot_bytes = NTHREADS, SLOTS, SLOT_BYTES
    c = cfg.n_embd
    device = decoder.head.weight.device
    bulk = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)  # Hopper's bulk copies
    return dict(
        C=c, H=cfg.n_head, D=c // cfg.n_head, N_LAYER=cfg.n_layer, VOCAB=cfg.vocab_size, CACHE_LEN=decoder.length,
        HIDDEN=decoder.blocks[0].fc.weight.shape[0], NTHREADS=nthreads, SLOTS=slots, SLOT_BYTES=slot_bytes,
        FP16=int(decoder.head.weight.dtype == torch.float16), WAIT_LIMIT=WAIT_LIMIT, PROFILE_AT=PROFILE_AT,
        PAIRS=math.ceil(c / (2 * nthreads)), POS_PER_THREAD=math.ceil(decoder.length / nthreads), COPY_BULK=int(bulk),
    ) | ABLATE  # fmt: skip


def source(consts: dict) -> str:
    """The kernel's text with its constants defined in front."""
    return "".join(f"#define {k} {v}\n" for k, v in consts.items()) + SOURCE.read_text()


def switches(consts: dict) -> dict:
    """Which variant of the kernel ``consts`` compiles, for a model of a given shape and dtype: the launch's
    settings (``NTHREADS``, ``SLOTS``, ``SLOT_BYTES``) and every switch of ``stream_step.cu`` (each ``#ifndef``
    there), at its value in ``consts`` or else the kernel's own default. A recorded run keeps them, so that it
    says which variant it timed."""
    defaults = {k: int(v) for k, v in re.findall(r"#ifndef (\w+)[^\n]*\n#define \1 (-?\d+)", SOURCE.read_text())}
    launch = {k: consts[k] for k in ("NTHREADS", "SLOTS", "SLOT_BYTES")}
    return launch | {k: consts.get(k, v) for k, v in defaults.items()}


def shared_bytes(consts: dict) -> int:
    """Dynamic shared memory of one block: the slots, then the fp32 scratch (``stream_step.cu``'s layout)."""
    nwarps = consts["NTHREADS"] // 32
    floats = 2 * consts["C"] + 2 * consts["D"] + consts["SLOT_BYTES"] // (4 * consts["C"]) + 4
    return consts["SLOTS"] * consts["SLOT_BYTES"] + 4 * (floats + nwarps * consts["D"] + nwarps)


def refuse(decoder) -> str | None:
    """Why this step cannot run ``decoder`` (a sentence that says what to use instead), or None."""
    cfg, w = decoder.config, decoder.head.weight
    why = why_not(w.device, cfg)  # the GPU: CUDA, compute capability, shared memory
    if why:
        return why
    if w.dtype not in (torch.bfloat16, torch.float16):
        return f"The streaming step reads 16-bit weights (bf16 or fp16), not {w.dtype}; pass dtype=torch.bfloat16."
    if decoder.batch != 1 or decoder.kv_int8:
        return "The streaming step decodes one sequence (batch 1) over a float KV cache."
    if any(getattr(block, name).bias is None for block in decoder.blocks for name in ("qkv", "proj", "fc", "out")):
        return "The streaming step adds GPT-2's biases; this model's layers have none. Use kernels=True."
    head_dim = cfg.n_embd // cfg.n_head
    if cfg.n_embd % 8 or head_dim % 8:
        return (
            f"The streaming step copies 16 bytes at a time: width {cfg.n_embd} and head size {head_dim} must be "
            "multiples of 8."
        )
    if ABLATE.get("KV_GROUPS") and head_dim not in (8, 16, 32, 64, 128, 256):
        return (
            f"With KV_GROUPS, head size / 8 threads of a warp share a cached position: head size {head_dim} must "
            "be 8, 16, 32, 64, 128 or 256; leave KV_GROUPS out."
        )
    norms = [n for b in decoder.blocks for n in (b.ln_1, b.ln_2)] + [decoder.ln_f]
    if len({n.eps for n in norms}) > 1:
        return "The streaming step takes one LayerNorm epsilon for every norm (GPT-2's layer_norm_epsilon)."
    if len({p.dtype for p in decoder.parameters()} | {w.dtype}) > 1:
        return "The streaming step reads every weight in one 16-bit type; convert the whole model to it."
    return None


def why_not(device, config) -> str | None:
    """Why the streaming step cannot run a model of ``config`` on ``device`` (a sentence that says what to do),
    or None: the checks that need no weights (a CUDA GPU of compute capability 8.0 or newer, with the shared
    memory a block needs at the current ``SLOTS`` and ``SLOT_BYTES``: a Hopper GPU at the defaults)."""
    device = torch.device(device)
    if device.type != "cuda" or torch.version.cuda is None:
        return "The streaming step is CUDA C++: it needs an NVIDIA GPU and PyTorch's CUDA build."
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "The streaming step's copies (cp.async) need compute capability 8.0 (Ampere) or newer."
    consts = dict(
        C=config.n_embd, D=config.n_embd // config.n_head, NTHREADS=NTHREADS, SLOTS=SLOTS, SLOT_BYTES=SLOT_BYTES
    )
    need = shared_bytes(consts)
    limit = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 48 * 1024)
    if need > limit:
        return (
            f"The streaming step needs {need:,} bytes of shared memory a block ({SLOTS} slots of {SLOT_BYTES:,}); "
            f"this GPU gives {limit:,}: lower stream_step.SLOTS or SLOT_BYTES, or use kernels=True."
        )
    return None


CLOCK_PARTS = {
    "wait": "waiting at the count for the other blocks",
    "setup": "reading the stage's input and norming it (nothing in an attention stage)",
    "compute": "computing on its pieces (their products, the attention over the cached positions) and waiting for "
    "the copies of a stage's later pieces",
    "arrive": "adding its part of the MLP's output and arriving at the count (in the output layer: its best row, "
    "and the last block's pick of the token)",
    "between": "between stages: waiting for the copy of a stage's first piece, reading before the wait what no "
    "other block writes (cached keys and values, norm weights, biases)",
}


def clock_shares(prof: dict) -> dict:
    """Each part of ``CLOCK_PARTS``: its share of a block's token (from the block's start to its finish), the
    mean over blocks, from ``StreamStep.profile``'s clocks. The parts add up to the whole token."""
    f = {k: v.double() for k, v in prof.items()}
    between = f["wait_from"].clone()  # (blocks, stages): from the last stage's end to this stage's wait
    between[:, 1:] -= f["end"][:, :-1]
    cycles = {
        "wait": f["wait_to"] - f["wait_from"],
        "setup": f["ready"] - f["wait_to"],
        "compute": f["computed"] - f["ready"],
        "arrive": f["end"] - f["computed"],
        "between": between,
    }
    shares = {k: (v.sum(1) / f["finish"]) for k, v in cycles.items()}  # (blocks,) each
    shares["between"] += (f["finish"] - f["end"][:, -1]) / f["finish"]  # after the last stage
    return {k: v.mean().item() for k, v in shares.items()}


@functools.cache
def _driver():
    lib = ctypes.CDLL("libcuda.so.1")  # the CUDA driver, wherever an NVIDIA GPU runs

    def check(result: int, what: str) -> None:
        if result != 0:
            name = ctypes.c_char_p()
            lib.cuGetErrorString(result, ctypes.byref(name))
            raise RuntimeError(f"{what} failed: {name.value.decode() if name.value else result}")

    return lib, check


class StreamStep:
    """One greedy decode step of ``decoder`` at batch 1 in one launch of the streaming kernel, with the interface
    of the Triton step (``triton_step.TritonStep``): calling it reads the token ``tok`` (1, 1) at position ``pos``
    (1,), writes the keys and values at ``pos``, the next token at ``pos + 1`` of ``out`` (1, L) and into ``tok``,
    and advances ``pos``; everything stays on the device, so steps can be captured in a CUDA graph.

    The decoder's caches must be set up for batch 1 before the step is made (the table holds where they lie), and
    the kernel's arguments are fixed then: assigning other tensors to ``tok``, ``pos`` or ``out`` later has no effect.
    Making it packs a copy of the weights (the plan's stream: as many bytes as the model's matrices) and compiles
    the kernel (about a second). After steps have run, ``check()`` raises if a wait gave up.
    """

    def __init__(self, decoder, tok: torch.Tensor, pos: torch.Tensor, out: torch.Tensor, blocks: int | None = None):
        why = refuse(decoder)
        if why:
            raise ValueError(why)
        self.decoder, self.tok, self.pos, self.out = decoder, tok, pos, out
        device = decoder.head.weight.device
        props = torch.cuda.get_device_properties(device)
        self.blocks = blocks or props.multi_processor_count  # one block per multiprocessor: all run at once
        if SLOT_BYTES % 16:
            raise ValueError(f"stream_step.SLOT_BYTES must be a multiple of 16 (the copies' size), not {SLOT_BYTES}.")
        self.consts = defines(decoder)
        self.switches = switches(self.consts)  # which variant of the kernel this step runs
        self.shared = shared_bytes(self.consts)
        self.plan = plan(decoder, self.blocks, self.consts["SLOT_BYTES"])
        self.table = torch.tensor(
            [[_tensor(block, name).data_ptr() for name in COLUMNS] for block in decoder.blocks],
            dtype=torch.int64, device=device,
        )  # fmt: skip
        c = decoder.config.n_embd
        self.act = torch.zeros(4, c, device=device)  # the residual in turn (2 rows), after attention, q
        self.best = torch.zeros(2, self.blocks, device=device)  # each block's best logit and row (bits)
        # arrivals, blocks done, gave up, unused; with ABLATE["PROFILE"], each block's clocks from PROFILE_AT on
        # (8 words a stage, and a last row: the block's finish and start)
        marks = PROFILE_AT + self.blocks * 8 * (3 * decoder.config.n_layer + 2) if self.consts.get("PROFILE") else 4
        self.counts = torch.zeros(marks, dtype=torch.int32, device=device)
        self._function = _compile(self.consts, self.shared, device)

        # the kernel's arguments, made once: the tensors stay where they are for the step's life
        d, p = decoder, self.plan
        pointers = [
            p.stream, p.pieces, p.n_pieces, self.table, d.head.weight, d.wpe.weight, d.ln_f.weight, d.ln_f.bias,
            self.act, self.best, self.counts, tok, pos, out,
        ]  # fmt: skip
        self._args = [ctypes.c_void_p(t.data_ptr()) for t in pointers]
        self._args += [ctypes.c_int(p.pieces.shape[1]), ctypes.c_float(d.ln_f.eps)]
        self._array = (ctypes.c_void_p * len(self._args))(
            *[ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in self._args]
        )

    def __call__(self) -> None:
        lib, check = _driver()
        threads = self.consts["NTHREADS"]  # the count the kernel was compiled for
        with torch.cuda.device(self.tok.device):  # the function belongs to that device's context
            stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
            launch = lib.cuLaunchKernel(
                self._function, self.blocks, 1, 1, threads, 1, 1, self.shared, stream, self._array, None
            )
            check(launch, "Launching the streaming step")

    def profile(self) -> dict:
        """The clocks of the last step, made with ``ABLATE["PROFILE"] = 1``: per block (rows) and stage (columns:
        3 a layer, then the output layer), the block's clock cycles from its start to its wait's start
        (``wait_from``), to the wait's end (``wait_to``), to the stage set up (``ready``: its input read and
        normed), to its pieces computed (``computed``), to its end (``end``: arrived), and the cycles it waited
        for copies (``copy``, thread 0's share); ``finish``, each block's last cycle, and ``start_ns``, its start
        on the GPU's clock (ns, its low 32 bits: compare the blocks of one step only). The marks are 32-bit cycle
        counts, so a step that ran longer than about two seconds (a wait that gave up) has no usable clocks."""
        if not self.consts.get("PROFILE"):
            raise ValueError('Make the step with stream_step.ABLATE["PROFILE"] = 1 to read its clocks.')
        stages = 3 * self.decoder.config.n_layer + 1
        words = self.counts[self.consts["PROFILE_AT"] :].view(self.blocks, stages + 1, 8)  # 8 words a stage
        marks = words.to(torch.int64).cpu() & 0xFFFFFFFF
        names = ("wait_from", "wait_to", "ready", "computed", "end", "copy")
        fields = {name: marks[:, :stages, k] for k, name in enumerate(names)}
        return fields | {"finish": marks[:, stages, 0], "start_ns": marks[:, stages, 1]}

    def check(self) -> None:
        """Raise if a wait gave up in the steps run so far (the tokens they made are wrong)."""
        raise_if_gave_up(self.counts, self.counts[:3], "The streaming step's blocks did not all run at once")


_compiled: dict = {}


def _compile(consts: dict, shared: int, device: torch.device):
    """Compile the kernel with NVRTC for this GPU (once per shape), load it, and allow its shared memory."""
    text = source(consts)
    key = (text, device.index)  # the text itself: an edited .cu compiles again
    if key not in _compiled:
        try:
            from torch.cuda._utils import _nvrtc_compile  # PyTorch's NVRTC wrapper (PyTorch 2.8 and newer)
        except ImportError as err:
            raise RuntimeError("The streaming step compiles with NVRTC through PyTorch 2.8 or newer.") from err
        major, minor = torch.cuda.get_device_capability(device)
        with torch.cuda.device(device):
            # keywords: the wrapper's arguments and its answer changed (PyTorch 2.8: the binary; 2.9 on: a pair)
            arch = f"{major}{minor}"
            try:
                binary = _nvrtc_compile(text, "stream_step", compute_capability=arch, nvcc_options=["-std=c++17"])
            except OSError as err:  # PyTorch's wrapper adds the CUDA toolkit's include folder, found by CUDA_HOME
                raise RuntimeError(
                    f"Compiling the streaming step needs the CUDA toolkit's headers, which PyTorch did not find "
                    f"({err}). Set CUDA_HOME to the toolkit's folder (Colab has one in /usr/local/cuda), or use "
                    "kernels=True."
                ) from err
            binary = binary[0] if isinstance(binary, tuple) else binary
            lib, check = _driver()
            torch.zeros(1, device=device)  # the device's context is current
            module, function = ctypes.c_void_p(), ctypes.c_void_p()
            check(lib.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(binary)), "Loading the streaming step")
            check(lib.cuModuleGetFunction(ctypes.byref(function), module, b"stream_step"), "Finding the kernel")
            check(lib.cuFuncSetAttribute(function, 8, shared), "Allowing its shared memory")  # 8: max dynamic bytes
        _compiled[key] = function
    return _compiled[key]
