"""helpers.roofline: intensity, the roofs and which one bounds a step (the timing itself needs a GPU)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import bench, roofline


def _rec(batch, tok_s, bytes_per_step=250e6, bandwidth_gbs=3000.0, peak=800e12):
    flops = bench.step_flops(GPT2Config(), batch, 96)
    return {"batch": batch, "decode_tok_s": tok_s, "bytes_per_step": bytes_per_step, "flops_per_step": flops,
            "bandwidth_GBs": bandwidth_gbs, "peak_flops": peak}  # fmt: skip


def test_step_flops_counts_each_weight_twice_per_sequence_plus_attention():
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=300, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    # the weights a step multiplies: every matrix of the blocks' products and the (tied) output layer, counted
    # from the model itself (biases, LayerNorms and the position embedding are no products)
    weights = sum(p.numel() for n, p in model.transformer.h.named_parameters() if n.endswith("attn.weight")
                  or n.endswith("proj.weight") or n.endswith("fc.weight")) + model.lm_head.weight.numel()  # fmt: skip
    assert bench.step_flops(cfg, 1, 0) == 2 * weights
    assert bench.step_flops(cfg, 4, 100) == 4 * (2 * weights + 2 * 2 * 2 * 64 * 100)  # q.k and p.v per layer


def test_intensity_grows_with_the_batch_and_the_ridge_splits_the_bounds():
    one, many = _rec(1, 5000), _rec(512, 400_000)
    assert roofline.intensity(many) == pytest.approx(512 * roofline.intensity(one))
    assert roofline.ridge(3000e9, 800e12) == pytest.approx(266.7, rel=1e-3)
    assert roofline.bound(one) == "bytes" and roofline.bound(many) == "arithmetic"
    assert roofline.achieved(one) == pytest.approx(one["flops_per_step"] * 5000)  # one token a step
    assert roofline.achieved(many) == pytest.approx(many["flops_per_step"] * 400_000 / 512)


def test_the_roof_is_the_lower_of_bandwidth_and_peak():
    assert roofline.roof(10, 3e12, 800e12) == 30e12
    assert roofline.roof(1000, 3e12, 800e12) == 800e12


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_the_command_says_why(capsys):
    with pytest.raises(SystemExit):
        roofline.main([])
    assert "no CUDA GPU" in capsys.readouterr().err
