"""helpers.fastgen's streaming decode step (one CUDA kernel launch a token, weights streamed through shared
memory), against the eager decoder.

Without a GPU, the plan (which block reads which weights, in which order, from the packed stream) runs through
``stream_step.simulate``, the kernel's schedule in PyTorch, and the kernel's text is compiled for a Hopper GPU
with ``nvcc`` where one is installed. On a GPU the kernel itself runs.
"""

import itertools
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config

from helpers import fastgen
from helpers.fastgen import stream_step

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"


def _decoder(sharp_gpt2, dtype=torch.float32, length=40, n=34, device=DEV, **shape):
    """A small GPT-2 (``shape``: its width and heads) whose caches hold ``n`` positions of a prompt."""
    decoder = fastgen.Decoder(sharp_gpt2(**{"n_head": 2} | shape).to(device), dtype)
    prompt = torch.randint(0, 300, (1, n), generator=torch.Generator().manual_seed(2)).to(device)
    decoder.setup_caches(1, length)
    decoder(prompt, decoder.arange[:n])
    return decoder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("blocks, slot_bytes", [(1, 1024), (3, 512), (7, 4096), (40, 2048)])
def test_the_plan_gives_every_weight_to_one_block_once(blocks, slot_bytes, dtype, sharp_gpt2):
    """Rebuild each matrix from the pieces: every row (every head's columns of the projection) comes back once,
    each piece fits its slot, and each block runs the stages in order, each stage's pieces one after another,
    starting and ending it exactly once."""
    decoder = _decoder(sharp_gpt2, dtype, device="cpu")
    cfg = decoder.config
    c, head_dim = cfg.n_embd, cfg.n_embd // cfg.n_head
    p = stream_step.plan(decoder, blocks, slot_bytes)
    size = decoder.head.weight.element_size()
    rebuilt = {
        "qkv": [torch.full_like(b.qkv.weight, float("nan")) for b in decoder.blocks],
        "attn": [torch.full_like(b.proj.weight, float("nan")) for b in decoder.blocks],
        "mlp": [torch.full((b.fc.weight.shape[0], 2, c), float("nan"), dtype=dtype) for b in decoder.blocks],
        "head": [torch.full_like(decoder.head.weight, float("nan"))],
    }
    for b in range(blocks):
        pieces = p.pieces[b, : p.n_pieces[b]]
        stages = [3 * cfg.n_layer if q[0] == 3 else 3 * int(q[1]) + int(q[0]) for q in pieces]
        assert stages == sorted(stages) and set(stages) == set(range(3 * cfg.n_layer + 1))  # in order, none left out
        for kind in stream_step.KINDS:
            for layer in range(1 if kind == "head" else cfg.n_layer):
                mine = [q for q in pieces if q[0] == stream_step.KINDS.index(kind) and q[1] == layer]
                assert mine and mine[0][6] & stream_step.FIRST and mine[-1][6] & stream_step.LAST
                assert sum(bool(q[6] & stream_step.FIRST) for q in mine) == 1
                assert sum(bool(q[6] & stream_step.LAST) for q in mine) == 1
                for q in mine:
                    w = stream_step._piece_weights(p, q, c, head_dim).to(dtype)
                    assert w.numel() * size <= slot_bytes
                    lo, hi, h = int(q[2]), int(q[3]), int(q[4])
                    target = rebuilt[kind][layer]
                    view = target[lo:hi, h * head_dim : (h + 1) * head_dim] if kind == "attn" else target[lo:hi]
                    assert view.isnan().all()  # not given to another piece before
                    view.copy_(w)
    for layer, block in enumerate(decoder.blocks):
        assert torch.equal(rebuilt["qkv"][layer], block.qkv.weight)
        assert torch.equal(rebuilt["attn"][layer], block.proj.weight)
        assert torch.equal(rebuilt["mlp"][layer][:, 0], block.fc.weight)
        assert torch.equal(rebuilt["mlp"][layer][:, 1], block.out.weight.T)
    assert torch.equal(rebuilt["head"][0], decoder.head.weight)
    # each block's pieces lie one after another in the stream, blocks one after another
    offsets = [int(q[5]) for b in range(blocks) for q in p.pieces[b, : p.n_pieces[b]]]
    assert offsets == sorted(offsets) and offsets[0] == 0


@pytest.mark.parametrize("blocks, slot_bytes", [(1, 1024), (3, 512), (40, 2048)])
def test_the_plans_schedule_gives_the_eager_residual_and_token(blocks, slot_bytes, sharp_gpt2):
    """The kernel's schedule in PyTorch (every stage's pieces, weights read from the stream) is the eager step."""
    decoder = _decoder(sharp_gpt2, device="cpu")
    n = 34
    p = stream_step.plan(decoder, blocks, slot_bytes)
    x, token = stream_step.simulate(p, decoder, 7, n)
    ids = torch.tensor([[7]])
    k_before = [b.cache.k.clone() for b in decoder.blocks]
    hidden = decoder.hidden(ids, decoder.arange[n : n + 1])[0, -1]  # the eager step, same token and position
    logits = decoder(ids, decoder.arange[n : n + 1])[0].flatten()
    torch.testing.assert_close(x, hidden, rtol=1e-4, atol=1e-5)
    assert token == logits.argmax().item()
    for before, block in zip(k_before, decoder.blocks, strict=True):  # the eager step rewrote the same keys
        torch.testing.assert_close(before, block.cache.k, rtol=1e-4, atol=1e-5)


def test_the_step_refuses_what_it_cannot_run(sharp_gpt2):
    decoder = _decoder(sharp_gpt2, device="cpu")
    assert "NVIDIA GPU" in stream_step.refuse(decoder)
    with pytest.raises(ValueError, match="NVIDIA GPU"):
        stream_step.StreamStep(decoder, *(torch.zeros(1, dtype=torch.long),) * 3)
    assert "NVIDIA GPU" in stream_step.why_not("cpu", decoder.config)
    with pytest.raises(ValueError, match="use larger slots"):
        stream_step.plan(decoder, 2, slot_bytes=16)
    if not GPU:
        with pytest.raises(ValueError, match="one launch a token needs a GPU"):
            fastgen.FastGPT2(sharp_gpt2(n_head=2), kernels="stream")


def _shape_only(cfg, length: int, dtype=torch.bfloat16) -> SimpleNamespace:
    """What ``stream_step.defines`` reads of a decoder (its shape, cache length and dtype), without weights."""
    return SimpleNamespace(
        config=cfg, length=length, blocks=[SimpleNamespace(fc=SimpleNamespace(weight=torch.empty(4 * cfg.n_embd, 0)))],
        head=SimpleNamespace(weight=torch.empty(0, dtype=dtype)),
    )  # fmt: skip


@pytest.mark.parametrize(
    "dtype, arch, ablate",
    [
        (torch.bfloat16, 90, {}),
        (torch.float16, 90, {"COPY_BULK": 1}),
        (torch.bfloat16, 90, {"COPY_BULK": 1}),
        (torch.bfloat16, 90, {"PROFILE": 1, "ARRIVE_RELEASE": 1, "COPY_FROM": 32}),
        (torch.bfloat16, 90, {"KV_GROUPS": 1, "COPY_BULK": 1}),
        (torch.bfloat16, 80, {}),
    ],
)
def test_the_kernel_compiles_for_a_hopper_gpu(dtype, arch, ablate, monkeypatch, tmp_path):
    """No GPU here: compile the kernel's text, with the constants ``defines`` gives GPT-2 124M at 160 positions,
    with nvcc where it is installed (for a Hopper GPU; an Ampere one without Hopper's bulk copies), so that a
    syntax or type error shows before a GPU is rented; the compiler must also keep it off the stack."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc on this machine (the kernel is compiled by NVRTC on a GPU)")
    monkeypatch.setattr(stream_step, "ABLATE", ablate)
    consts = stream_step.defines(_shape_only(GPT2Config(), 160, dtype))  # GPT-2 124M's shape, without its weights
    path = tmp_path / "stream_step.cu"
    path.write_text(stream_step.source(consts))
    done = subprocess.run(
        [nvcc, "-cubin", f"-arch=sm_{arch}", "-std=c++17", "-Xptxas", "-v", "-o", f"{path}.cubin", str(path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "0 bytes spill stores" in done.stderr and "0 bytes stack frame" in done.stderr, done.stderr
    assert stream_step.shared_bytes(consts) <= 227 * 1024  # an H100's most per block


def test_switches_say_which_variant_of_the_kernel_is_built(monkeypatch):
    """A recorded run keeps ``switches``: the launch's settings and every ``#ifndef`` switch of the kernel's text,
    at the value the constants give it (``ABLATE`` through ``defines``) or else at the kernel's own default."""
    names = re.findall(r"#ifndef (\w+)", stream_step.SOURCE.read_text())
    monkeypatch.setattr(stream_step, "ABLATE", {"KV_GROUPS": 1, "ROWS": 2})
    got = stream_step.switches(stream_step.defines(_shape_only(GPT2Config(n_embd=64, n_head=2, n_layer=1), 40)))
    assert set(got) == {"NTHREADS", "SLOTS", "SLOT_BYTES", *names} and len(names) == len(set(names)) >= 8
    assert got["KV_GROUPS"] == 1 and got["ROWS"] == 2  # set by ABLATE
    assert got["NO_WAIT"] == 0 and got["PROFILE"] == 0  # the kernel's defaults
    assert got["COPY_BULK"] == 0  # defines: these weights lie on the CPU, not a Hopper GPU: cp.async copies
    assert got["SLOTS"] == stream_step.SLOTS and got["NTHREADS"] == stream_step.NTHREADS


gpu = pytest.mark.skipif(not GPU, reason="the streaming step is CUDA C++: it runs on an NVIDIA GPU")


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("blocks, slot_bytes", [(None, None), (5, None), (5, 512)])
@pytest.mark.parametrize("ablate", [{}, {"COPY_BULK": 0}, {"KV_GROUPS": 1}], ids=["default", "cp.async", "KV_GROUPS"])
def test_one_step_gives_the_eager_residual_and_token(dtype, blocks, slot_bytes, ablate, monkeypatch, sharp_gpt2):
    """One block a multiprocessor, and 5 blocks (several attention items a block); with 512-byte slots, every
    stage of a block takes several pieces (the ring of slots turns many times in a token). The copies of the
    GPU's default, every thread's cp.async copies (the default before Hopper), and the attention's coalesced
    reads of the cache."""
    if slot_bytes:
        monkeypatch.setattr(stream_step, "SLOT_BYTES", slot_bytes)
    monkeypatch.setattr(stream_step, "ABLATE", ablate)
    _one_step(_decoder(sharp_gpt2, dtype), 34, blocks)


@gpu
@pytest.mark.parametrize("ablate", [{}, {"KV_GROUPS": 1}], ids=["default", "KV_GROUPS"])
def test_one_step_with_gpt2s_head_size_and_a_width_over_the_threads(ablate, monkeypatch, sharp_gpt2):
    """Width 320 (two elements a thread for some of the 256 threads), head size 64 as GPT-2's (8 threads a cached
    position with KV_GROUPS)."""
    monkeypatch.setattr(stream_step, "ABLATE", ablate)
    _one_step(_decoder(sharp_gpt2, torch.bfloat16, n_embd=320, n_head=5), 34, None)


@gpu
@pytest.mark.parametrize("n", [1, 7, 8, 40, 62])
def test_the_coalesced_attention_reads_the_cache_in_rounds(n, monkeypatch, sharp_gpt2):
    """A head of 256 values. With KV_GROUPS, 32 threads share a cached position and a round reads 8 (the block's
    256 threads), so a long prompt takes more rounds than those read before the wait (KV_AHEAD). Against the
    default layout (a thread a position) from the same caches: at this width the eager decoder's bf16 rounding
    of a sharp attention differs from either kernel by more than the other tests allow (an H100, 2026-12-07)."""
    decoder = _decoder(sharp_gpt2, torch.bfloat16, length=64, n=n, n_embd=256, n_head=1)
    x = []
    for groups in (0, 1):
        monkeypatch.setattr(stream_step, "ABLATE", {"KV_GROUPS": groups})
        step = _step_at(decoder, n)
        step()  # both write the same key and value at position n (the same q, k, v stage)
        step.check()
        x.append(step.act[decoder.config.n_layer % 2].clone())
    torch.testing.assert_close(x[1], x[0], rtol=1e-2, atol=1e-2)
    ln = decoder.ln_f
    logits = F.layer_norm(x[1], x[1].shape, ln.weight.float(), ln.bias.float(), ln.eps) @ decoder.head.weight.float().T
    assert step.tok.item() == logits.argmax()


def _step_at(decoder, n, blocks=None):
    """A streaming step of token 7 at position ``n`` (its ``tok``, ``pos`` and ``out`` are the step's)."""
    tok, pos = torch.tensor([[7]], device=DEV), torch.tensor([n], device=DEV)
    out = torch.zeros(1, decoder.length, dtype=torch.long, device=DEV)
    return stream_step.StreamStep(decoder, tok, pos, out, blocks=blocks)


def _one_step(decoder, n, blocks):
    """One step of the streaming kernel at position ``n`` against the eager decoder."""
    step = _step_at(decoder, n, blocks)
    tok, pos, out = step.tok, step.pos, step.out
    step()
    ids = torch.tensor([[7]], device=DEV)
    hidden = decoder.hidden(ids, decoder.arange[n : n + 1])[0, -1].float()
    x = step.act[decoder.config.n_layer % 2]
    torch.testing.assert_close(x, hidden, rtol=2e-2, atol=2e-2)
    # the token: the argmax of the output layer on the kernel's residual, in fp32 as the kernel computes it (the
    # eager step's logits are rounded to 16 bits, where close logits tie or swap)
    ln = decoder.ln_f
    logits = F.layer_norm(x, x.shape, ln.weight.float(), ln.bias.float(), ln.eps) @ decoder.head.weight.float().T
    assert out[0, n + 1] == logits.argmax() and tok.item() == logits.argmax() and pos.item() == n + 1
    assert not step.counts.any()  # every count back to 0 for the next token, no wait gave up
    step.check()


@gpu
def test_the_streaming_step_generates_the_eager_decoders_tokens(sharp_gpt2):
    model = sharp_gpt2(n_head=2).to(DEV)
    fast = fastgen.FastGPT2(model, dtype=torch.bfloat16, kernels="stream")
    assert fast.kernels and fast.one_launch == "stream"
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(1)).to(DEV)
    assert torch.equal(fast.generate(ids, 12), fastgen.FastGPT2(model, dtype=torch.bfloat16).generate(ids, 12))


@gpu
def test_a_wait_that_cannot_fill_gives_up_and_says_so(monkeypatch, sharp_gpt2):
    """A count that starts far below zero never reaches its target: the first wait gives up after WAIT_LIMIT polls,
    flags it and lets the other waits pass, and check() says so (instead of a hang)."""
    monkeypatch.setattr(stream_step, "WAIT_LIMIT", 64)
    decoder = _decoder(sharp_gpt2, torch.bfloat16)
    step = _step_at(decoder, 0)
    step.counts[0] = -(1 << 20)
    step()
    assert step.counts.tolist() == [0, 0, 1, 0]  # the last block reset the counts; the flag stays for check()
    with pytest.raises(RuntimeError, match="a wait gave up"):
        step.check()
    assert not step.counts.any()  # check() cleared the flag


@gpu
def test_the_profile_gives_every_blocks_clocks_in_order(monkeypatch, sharp_gpt2):
    """With ABLATE["PROFILE"], the same token, and every block's clocks at each stage: the wait starts, ends, then
    the stage ends; the stages follow one another."""
    decoder = _decoder(sharp_gpt2, torch.bfloat16)
    steps = []
    for ablate in ({}, {"PROFILE": 1}):
        monkeypatch.setattr(stream_step, "ABLATE", ablate)
        steps.append(_step_at(decoder, 5))
        steps[-1]()
    assert torch.equal(steps[0].tok, steps[1].tok) and torch.equal(steps[0].act, steps[1].act)
    with pytest.raises(ValueError, match="PROFILE"):
        steps[0].profile()
    prof = steps[1].profile()
    stages = 3 * decoder.config.n_layer + 1
    assert prof["end"].shape == (steps[1].blocks, stages)
    order = [prof[name] for name in ("wait_from", "wait_to", "ready", "computed", "end")]
    assert all((a <= b).all() for a, b in itertools.pairwise(order))
    assert (prof["wait_from"][:, 1:] > 0).all() and (prof["end"] > prof["ready"]).all()  # every mark written
    assert (prof["end"][:, :-1] <= prof["wait_from"][:, 1:]).all() and (prof["end"][:, -1] <= prof["finish"]).all()
    shares = stream_step.clock_shares(prof)
    assert set(shares) == set(stream_step.CLOCK_PARTS) and abs(sum(shares.values()) - 1) < 0.05


def test_clock_shares_splits_each_blocks_token_into_its_parts():
    """Two blocks, two stages, clocks made up: each part's share is the mean over blocks of its cycles over the
    token's (the block's finish)."""
    t = lambda rows: torch.tensor(rows)  # noqa: E731
    prof = {
        "wait_from": t([[0, 40], [0, 50]]), "wait_to": t([[0, 50], [0, 60]]), "ready": t([[10, 60], [10, 70]]),
        "computed": t([[30, 80], [30, 90]]), "end": t([[40, 90], [40, 100]]), "finish": t([100, 110]),
    }  # fmt: skip
    shares = stream_step.clock_shares(prof)
    # block 0: wait 10, setup 20, compute 40, arrive 20, between 0 + 0 (first wait at 0), then 10 at the finish
    assert shares["wait"] == pytest.approx((10 / 100 + 10 / 110) / 2)
    assert shares["compute"] == pytest.approx((40 / 100 + 40 / 110) / 2)
    assert sum(shares.values()) == pytest.approx(1)
