import pytest
import torch

from helpers import models, quant


@pytest.mark.parametrize("granularity", quant.GRANULARITIES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_within_half_a_step(granularity, symmetric):
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    codes, scale, zero = quant.quantize(w, 8, symmetric=symmetric, granularity=granularity, group_size=64)
    back = quant.dequantize(codes, scale, zero, w.shape)
    step = scale.expand(-1, codes.shape[1]).reshape(w.shape)
    assert (back - w).abs().le(step / 2 + 1e-6).all()
    assert codes.dtype == (torch.int8 if symmetric else torch.uint8)


def test_finer_granularity_and_more_bits_mean_less_error():
    torch.manual_seed(0)
    w = torch.randn(128, 512) * torch.logspace(-2, 1, 128)[:, None]  # rows of very different scales
    err = {
        (g, b): (quant.fake_quantize(w, b, granularity=g, group_size=64) - w).norm().item()
        for g in quant.GRANULARITIES
        for b in (4, 8)
    }
    assert err[("group", 4)] < err[("channel", 4)] < err[("tensor", 4)]
    assert err[("channel", 8)] < err[("channel", 4)]


def test_asymmetric_is_better_for_one_sided_values():
    w = torch.rand(16, 128)  # all positive: symmetric wastes half its codes
    sym = (quant.fake_quantize(w, 4, symmetric=True) - w).norm()
    asym = (quant.fake_quantize(w, 4, symmetric=False) - w).norm()
    assert asym < sym / 1.5


def test_int4_packing_round_trips_and_halves_the_bytes():
    codes = torch.randint(-8, 8, (32, 64), dtype=torch.int8)
    packed = quant.pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == codes.numel() // 2
    assert torch.equal(quant.unpack_int4(packed, codes.shape), codes)
    with pytest.raises(ValueError, match="-8..7"):
        quant.pack_int4(torch.tensor([9, 0], dtype=torch.int8))


def test_bad_arguments_are_clear_errors():
    w = torch.randn(4, 100)
    with pytest.raises(ValueError, match="between 2 and 8"):
        quant.quantize(w, 1)
    with pytest.raises(ValueError, match="tensor, channel, group"):
        quant.quantize(w, 8, granularity="row")
    with pytest.raises(ValueError, match="multiple of group_size"):
        quant.quantize(w, 8, granularity="group", group_size=64)


def test_fake_quantized_model_and_its_size(tiny_model):
    q8 = quant.fake_quantize_model(tiny_model, 8)
    ids = torch.randint(0, tiny_model.config.vocab_size, (1, 12))
    with torch.no_grad():
        diff = (q8(ids).logits - tiny_model(ids).logits).abs().max().item()
    assert 0 < diff < 0.05
    assert torch.equal(q8.transformer.wte.weight, tiny_model.transformer.wte.weight)  # embeddings untouched
    full = models.param_bytes(tiny_model)
    block = sum(layer.weight.numel() for _, _, layer in quant.block_linears(tiny_model))
    expected_saving = block * (4 - 1)  # fp32 -> int8 ...
    expected_saving -= sum(layer.weight.shape[1] for _, _, layer in quant.block_linears(tiny_model)) * 2  # + scales
    assert quant.weight_bytes(tiny_model, 8) == full - expected_saving


def test_int8_dynamic_quantizes_every_block_layer_and_stays_close(tiny_model):
    q = quant.int8_dynamic(tiny_model)
    dyn = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, dyn) for m in q.modules()) == 4 * tiny_model.config.n_layer + 1
    assert sum(isinstance(m, dyn) for m in quant.int8_dynamic(tiny_model, include_lm_head=False).modules()) == 8
    ids = torch.arange(20)[None]
    with torch.no_grad():
        ref, got = tiny_model(input_ids=ids).logits, q(input_ids=ids).logits
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert not isinstance(tiny_model.lm_head, dyn)  # the original is left as it was


def test_int8_linear_matches_the_dequantized_weight_and_gives_its_rows():
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 48)
    q = quant.Int8Linear.from_float(layer)
    assert q.weight.dtype == torch.int8 and q.scale.shape == (48,)
    codes, scale, zero = quant.quantize(layer.weight.detach(), 8, granularity="channel")
    w = quant.dequantize(codes, scale, zero, layer.weight.shape)
    x = torch.randn(3, 32)
    torch.testing.assert_close(q(x), x @ w.T + layer.bias.detach(), rtol=1e-5, atol=1e-5)
    q.matvec = True  # the one-row path: multiply-and-sum
    torch.testing.assert_close(q(x[:1]), x[:1] @ w.T + layer.bias.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.rows(torch.tensor([0, 5])), w[[0, 5]])


def test_swap_linears_replaces_every_layer_of_a_kind_and_nothing_else():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(8, 4)))
    x = torch.randn(2, 8)
    ref = model(x)
    quant.swap_linears(model, quant.dynamic_int8_linear, torch.nn.Linear)
    dyn = torch.ao.nn.quantized.dynamic.Linear
    assert isinstance(model[0], dyn) and isinstance(model[1][1], dyn) and isinstance(model[1][0], torch.nn.ReLU)
    assert (model(x) - ref).abs().max() < 0.05 * ref.abs().max()
