"""helpers.fastgen's hand-written Triton decode step, against the eager decoder it replaces.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by ``conftest.py`` before
``helpers.fastgen`` defines them), on a tiny GPT-2 shaped so that every mechanism is exercised: attention runs
over several blocks of the cache with different running maxima (the online softmax's rescale), several
programs add their partial sums into one output (atomic adds), and the output layer's argmax is split over
programs (the last one picks the token).
"""

import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

pytest.importorskip(
    "triton",
    reason="Triton installs with the dev extra on Linux x86-64 only; on macOS and Windows the kernel tests "
    "(and notebook 05's Triton step) are skipped: run them on Linux or Colab to see the kernels work",
)
if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("the kernels need a CUDA GPU or Triton's interpreter (TRITON_INTERPRET=1)", allow_module_level=True)

from helpers import fastgen  # noqa: E402  (after the interpreter flag: the kernels are defined at import)
from helpers.fastgen import triton_step  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU the kernels run there; on a CPU, interpreted


@pytest.fixture
def sharp_model(sharp_gpt2):
    """A 2-layer GPT-2 whose attention is sharp, so blocks of the cache have different running maxima."""
    return sharp_gpt2(n_embd=32)


@pytest.fixture
def small_blocks(monkeypatch):
    """Small kernel blocks (restored after the test): attention over 3 blocks of 16 cached positions, 4
    programs per head and 8 for the MLP, so that their partial sums meet in the output."""
    monkeypatch.setattr(triton_step, "ATTN_BLOCK", 16)
    monkeypatch.setitem(triton_step.KERNEL_CONFIGS, "attn", (8, 4))
    monkeypatch.setitem(triton_step.KERNEL_CONFIGS, "mlp", (16, 4))


IDS = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(1)).to(DEV)


def test_the_kernel_step_generates_the_eager_decoders_tokens(sharp_model, small_blocks):
    fast = fastgen.FastGPT2(sharp_model, kernels=True)
    assert fast.kernels
    assert torch.equal(fast.generate(IDS, 24), fastgen.FastGPT2(sharp_model).generate(IDS, 24))


def test_one_kernel_step_gives_the_eager_logits(sharp_model, small_blocks):
    decoder = fastgen.Decoder(sharp_model, torch.float32)
    n = 34  # cached positions 0..34: attention runs over 3 blocks of 16, so the running maximum is rescaled
    prompt = torch.randint(0, 300, (1, n), generator=torch.Generator().manual_seed(2)).to(DEV)
    decoder.setup_caches(1, 40)
    decoder(prompt, decoder.arange[:n])  # the prompt fills the cache
    tok, pos, out = (
        torch.tensor([[7]], device=DEV),
        torch.tensor([n], device=DEV),
        torch.zeros(1, 40, dtype=torch.long, device=DEV),
    )
    step = fastgen.TritonStep(decoder, tok, pos, out)
    step()  # token 7 at position n, through the three kernels per layer and the output layer's
    logits = decoder(torch.tensor([[7]], device=DEV), decoder.arange[n : n + 1])[
        0
    ]  # the eager step, same token and position
    torch.testing.assert_close(step.logits, logits, rtol=1e-4, atol=1e-5)
    assert out[0, n + 1] == logits.argmax()  # the last program picked the token and wrote it
    assert tok.item() == logits.argmax() and pos.item() == n + 1


def test_left_padding_is_dropped(sharp_model, small_blocks):
    fast = fastgen.FastGPT2(sharp_model, kernels=True)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long, device=DEV), IDS], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long, device=DEV), torch.ones_like(IDS)], 1)
    out = fast.generate(padded, 8, attention_mask=mask)
    assert torch.equal(out[:, 3:], fastgen.FastGPT2(sharp_model).generate(IDS, 8))


def test_the_kernels_need_a_head_size_that_is_a_power_of_2():
    odd = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=48, n_layer=1, n_head=2)).eval().to(DEV)
    with pytest.raises(ValueError, match="power of 2"):
        fastgen.FastGPT2(odd, kernels=True)  # head size 24
