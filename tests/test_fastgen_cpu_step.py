"""helpers.fastgen's C++ decode step (cpu_step, q8_step.cpp) against the eager q8_0 decoder it replaces.

A tiny GPT-2 with sharp attention and a head size of 20 (not a multiple of the 16 partial sums of the step's dot
products, so their tail runs too); widths that are not multiples of 32 (the q8_0 blocks' padding)."""

import platform

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import fastgen, q8
from helpers.fastgen import cpu_step

pytestmark = pytest.mark.skipif(not q8.available()[0], reason=f"the q8_0 kernel cannot build here: {q8.available()[1]}")


@pytest.fixture(scope="module")
def sharp_model():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=300, n_positions=64, n_embd=40, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # LayerNorm scales and biases away from 1 and 0
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(10)
    return model


IDS = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(1))


def prefilled(model, new_tokens=20):
    """A q8_0 FastGPT2 whose cache holds IDS, and the first new token."""
    fast = fastgen.FastGPT2(model, int8="q8_0", kernels=False)
    fast._prepare(IDS, new_tokens, None, 0.0, None, None)
    t = IDS.shape[1]
    first = int(fast.model(IDS, fast.model.arange[:t]).argmax())
    return fast, first


def test_the_step_gives_the_eager_decoders_logits_position_after_position(sharp_model):
    fast, token = prefilled(sharp_model)
    twin, _ = prefilled(sharp_model)  # a second cache: the C++ step writes one, the eager decoder the other
    step = cpu_step.CppStep(twin.model, twin._tok, twin._pos, twin._out)
    t = IDS.shape[1]
    for pos in range(t, t + 12):
        ref = fast.model(torch.tensor([[token]]), fast.model.arange[pos : pos + 1])[0]  # (V,)
        got = step.logits(token, pos)  # (V,)
        assert got.shape == ref.shape
        assert (got - ref).norm() / ref.norm() < 1e-5, f"position {pos}"
        token = int(ref.argmax())
    step.products()  # the products alone (for timing) leave the cache as it was
    # the step wrote the same keys and values into its cache
    for a, b in zip(fast.model.blocks, twin.model.blocks, strict=True):
        assert torch.allclose(a.cache.k, b.cache.k, atol=1e-5) and torch.allclose(a.cache.v, b.cache.v, atol=1e-5)


def test_greedy_decoding_with_the_step_gives_the_eager_decoders_tokens(sharp_model):
    fast = fastgen.FastGPT2(sharp_model, int8="q8_0")
    assert fast.kernels  # "auto" picks the C++ step for q8_0 weights and a float cache
    eager = fastgen.FastGPT2(sharp_model, int8="q8_0", kernels=False, compile=False)
    assert torch.equal(fast.generate(IDS, 30), eager.generate(IDS, 30))
    assert isinstance(fast.greedy_step(), cpu_step.CppStep)
    # twice in a row (the cache is reused) and a one-token prompt
    assert torch.equal(fast.generate(IDS[:, :1], 30), eager.generate(IDS[:, :1], 30))


def test_batches_and_sampling_use_the_models_step(sharp_model):
    fast = fastgen.FastGPT2(sharp_model, int8="q8_0")
    eager = fastgen.FastGPT2(sharp_model, int8="q8_0", kernels=False, compile=False)
    two = torch.cat([IDS, IDS.flip(1)])
    assert torch.equal(fast.generate(two, 10), eager.generate(two, 10))
    assert not isinstance(fast.greedy_step(), cpu_step.CppStep)
    sampled = [f.generate(IDS, 10, temperature=0.8, seed=3) for f in (fast, eager)]
    assert torch.equal(*sampled)


def test_clear_errors(sharp_model):
    assert not fastgen.FastGPT2(sharp_model, int8="q8_0", kv_cache="int8").kernels  # the step reads a float cache
    with pytest.raises(ValueError, match="float KV cache"):
        fastgen.FastGPT2(sharp_model, int8="q8_0", kv_cache="int8", kernels=True)
    plain = fastgen.FastGPT2(sharp_model, compile=False)
    plain._prepare(IDS, 5, None, 0.0, None, None)
    with pytest.raises(ValueError, match="int8='q8_0'"):
        cpu_step.CppStep(plain.model, plain._tok, plain._pos, plain._out)
    fast, _ = prefilled(sharp_model, new_tokens=3)
    step = cpu_step.CppStep(fast.model, fast._tok, fast._pos, fast._out)
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        step.logits(300, 9)
    with pytest.raises(RuntimeError, match="outside the cache"):
        step.logits(1, fast.model.length)
    fast._pos.fill_(fast.model.length - 1)
    with pytest.raises(RuntimeError, match="no room"):
        step()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the variants are x86 builds")
def test_other_builds_of_the_step_load_beside_this_cpus_and_compute_the_same(sharp_model):
    """Several builds in one process (notebook 03c loads a timed first build and a variant): each keeps its own
    class, and the AVX2 and plain C++ products give the same logits through the step."""
    fast, token = prefilled(sharp_model)
    t = IDS.shape[1]
    ref = cpu_step.CppStep(fast.model, fast._tok, fast._pos, fast._out).logits(token, t)
    for variant in ("avx2", "portable"):
        other = cpu_step.CppStep(fast.model, fast._tok, fast._pos, fast._out, kernel=q8.kernel(variant=variant))
        assert (other.logits(token, t) - ref).norm() / ref.norm() < 1e-5, variant
    q8.first_build_seconds()  # a build under yet another namespace, loaded after this CPU's
    again = fastgen.FastGPT2(sharp_model, int8="q8_0")
    assert torch.equal(
        again.generate(IDS, 8), fastgen.FastGPT2(sharp_model, int8="q8_0", kernels=False).generate(IDS, 8)
    )
