"""helpers.fastgen's persistent decode step (one kernel launch a token), against the eager decoder.

Without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set by ``conftest.py``), which
runs a grid's programs one after another: with several programs the step launches once per stage (the kernel
boundary is the barrier); with one program its own grid barriers are counted and passed, which checks the
barrier's arithmetic; and with two programs in one launch the first waits in vain, which checks that a barrier
gives up and says so instead of hanging. On a GPU the same tests run with real barriers.
"""

import os

import pytest
import torch

pytest.importorskip("triton", reason="Triton installs with the dev extra on Linux x86-64 only")
if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("the kernel needs a CUDA GPU or Triton's interpreter (TRITON_INTERPRET=1)", allow_module_level=True)

from helpers import fastgen  # noqa: E402  (after the interpreter flag: the kernels are defined at import)
from helpers.fastgen import persistent_step  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEV == "cuda"


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles smaller than the programs' shares, so that every loop over rows runs more than once, and attention
    runs over several blocks of the cache (the online softmax's rescale)."""
    monkeypatch.setattr(persistent_step, "CHUNK", 4)
    monkeypatch.setattr(persistent_step, "HEAD_TILE", 16)
    monkeypatch.setattr(persistent_step, "BLOCK_L", 16)
    monkeypatch.setattr(persistent_step, "INTERPRETED_PROGRAMS", 5)  # 2 heads: one program only meets barriers


IDS = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(1)).to(DEV)


def _one_step(decoder, n: int, **kw):
    """Fill the cache with an n-token prompt, then run one persistent step of token 7 at position n."""
    prompt = torch.randint(0, 300, (1, n), generator=torch.Generator().manual_seed(2)).to(DEV)
    decoder.setup_caches(1, 40)
    decoder(prompt, decoder.arange[:n])
    tok, pos = torch.tensor([[7]], device=DEV), torch.tensor([n], device=DEV)
    out = torch.zeros(1, 40, dtype=torch.long, device=DEV)
    step = persistent_step.PersistentStep(decoder, tok, pos, out, **kw)
    step()
    return step, tok, pos, out


def test_the_persistent_step_generates_the_eager_decoders_tokens(small_tiles, sharp_gpt2):
    model = sharp_gpt2(n_head=2)
    fast = fastgen.FastGPT2(model, kernels="persistent")
    assert fast.kernels and fast.one_launch == "persistent"
    assert torch.equal(fast.generate(IDS, 24), fastgen.FastGPT2(model).generate(IDS, 24))


@pytest.mark.parametrize("programs", [2, 3, 5])
def test_one_step_gives_the_eager_residual_and_token(small_tiles, programs, sharp_gpt2):
    decoder = fastgen.Decoder(sharp_gpt2(n_head=2), torch.float32)
    n = 34  # cached positions 0..34: three blocks of 16
    step, tok, pos, out = _one_step(decoder, n, n_programs=programs)
    ids = torch.tensor([[7]], device=DEV)
    hidden = decoder.hidden(ids, decoder.arange[n : n + 1])[0, -1]  # the eager step, same token and position
    logits = decoder(ids, decoder.arange[n : n + 1])[0]
    torch.testing.assert_close(step.x[decoder.config.n_layer % 2], hidden, rtol=1e-4, atol=1e-5)
    assert out[0, n + 1] == logits.argmax() and tok.item() == logits.argmax() and pos.item() == n + 1
    assert step.counts.tolist() == [0, 0, 0]  # both counts back to 0 for the next token, no barrier gave up


def test_one_program_counts_its_own_barriers(small_tiles, sharp_gpt2):
    decoder = fastgen.Decoder(sharp_gpt2(n_head=1), torch.float32)
    n = 20
    step, tok, pos, out = _one_step(decoder, n, n_programs=1, sync=True)  # the whole token in one launch
    logits = decoder(torch.tensor([[7]], device=DEV), decoder.arange[n : n + 1])[0]
    assert out[0, n + 1] == logits.argmax() and pos.item() == n + 1
    assert step.counts.tolist() == [0, 0, 0]
    step.check()  # no barrier gave up


@pytest.mark.skipif(ON_GPU, reason="on a GPU both programs run at once: the barrier fills")
def test_a_barrier_that_cannot_fill_gives_up_and_says_so(small_tiles, monkeypatch, sharp_gpt2):
    monkeypatch.setattr(persistent_step, "WAIT_LIMIT", 4)
    decoder = fastgen.Decoder(sharp_gpt2(n_head=1), torch.float32)
    step, *_ = _one_step(decoder, 20, n_programs=2, sync=True)  # the interpreter runs program 0 to the end first
    gave_up = getattr(persistent_step.GAVE_UP, "value", persistent_step.GAVE_UP)  # a Triton constexpr: its number
    assert step.counts[2] == 1 and step.counts[0] >= gave_up  # flagged; later waits pass at once
    with pytest.raises(RuntimeError, match="did not all run at once"):
        step.check()
    assert step.counts.tolist() == [0, 0, 0]  # read and cleared: the next steps wait again
    step.check()


def test_bad_settings_are_refused(sharp_gpt2):
    decoder = fastgen.Decoder(sharp_gpt2(n_head=2), torch.float32)
    decoder.setup_caches(1, 40)
    t = torch.zeros(1, 1, dtype=torch.long, device=DEV)
    with pytest.raises(ValueError, match="at least one program per head"):
        persistent_step.PersistentStep(decoder, t, t[0], t, n_programs=1)
    decoder.setup_caches(2, 40)
    with pytest.raises(ValueError, match="batch 1"):
        persistent_step.PersistentStep(decoder, t, t[0], t)
    if ON_GPU:  # more programs than multiprocessors could never all run at once
        with pytest.raises(ValueError, match="cannot all run at once"):
            decoder.setup_caches(1, 40)
            persistent_step.PersistentStep(
                decoder, t, t[0], t, n_programs=persistent_step.programs(decoder.wpe.weight.device) + 1
            )
    with pytest.raises(ValueError, match="kernels takes"):
        fastgen.FastGPT2(sharp_gpt2(n_head=2), kernels="fast")
    if not ON_GPU:
        with pytest.raises(ValueError, match="kernels='persistent' is a GPU step"):
            fastgen.FastGPT2(sharp_gpt2(n_head=2).float(), int8="q8_0", kernels="persistent")


@pytest.mark.skipif(ON_GPU, reason="records the prefetches in Triton's interpreter; a compiled kernel issues them")
def test_the_prefetches_ask_for_the_weights_the_next_stages_read(small_tiles, monkeypatch, sharp_gpt2, interpreted):
    """The prefetch instruction cannot run in the interpreter: record what it would be asked for instead, and
    check that every range lies inside a tensor the step reads next (no address outside the model's weights)
    and that the layers' weight matrices and the output layer's rows are all asked for."""
    asked = []
    monkeypatch.setattr(
        persistent_step,
        "_prefetch",
        lambda address, n_bytes, pid, P, LINES: asked.append(
            (int(interpreted(address).item()), int(interpreted(n_bytes).item()))
        ),
    )
    decoder = fastgen.Decoder(sharp_gpt2(n_head=2), torch.float32)
    decoder.setup_caches(1, 40)
    t = torch.zeros(1, 1, dtype=torch.long, device=DEV)
    step = persistent_step.PersistentStep(decoder, t, torch.zeros(1, dtype=torch.long, device=DEV), t.new_zeros(1, 40))
    step.meta["PREFETCH"] = True
    step()
    weights = {"head": decoder.head.weight} | {
        f"{i}.{name}": getattr(block, name).weight
        for i, block in enumerate(decoder.blocks)
        for name in ("qkv", "proj", "fc", "out")
    }
    spans = {k: (w.data_ptr(), w.data_ptr() + w.numel() * w.element_size()) for k, w in weights.items()}
    hit = set()
    for address, n_bytes in asked:
        if n_bytes <= 0:
            continue  # a program with no rows left asks for nothing
        inside = [k for k, (lo, hi) in spans.items() if lo <= address and address + n_bytes <= hi]
        assert inside, f"a prefetch of {n_bytes} bytes at {address:#x} lies outside every weight"
        hit.update(inside)
    assert hit == set(weights)  # layer 1's matrices (asked during layer 0), layer 0's (for the next token), the head
