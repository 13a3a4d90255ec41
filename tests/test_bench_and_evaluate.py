import math

import pytest
import torch

from helpers import bench, evaluate


def test_generation_record_is_consistent(tiny_model, tokenizer):
    rec = bench.generation(
        tiny_model, tokenizer, prompt_len=8, new_tokens=6, warmup=1, repeats=2, model_name="tiny", bandwidth=10e9
    )
    assert rec["device"] == "cpu" and rec["dtype"] == "float32" and rec["batch"] == 1
    assert rec["tpot_ms"] > 0 and rec["ttft_ms"] > 0
    assert rec["ttft_ms_min"] <= rec["ttft_ms"] <= rec["ttft_ms_max"]  # the spread of the prompt's runs
    assert math.isclose(rec["decode_tok_s"], 1000 / rec["tpot_ms"])
    weights = sum(p.numel() * 4 for p in {id(p): p for p in tiny_model.parameters()}.values())
    weights += sum(b.numel() * b.element_size() for b in tiny_model.buffers())
    kv = 2 * 2 * 32 * (8 + 3) * 4
    assert rec["bytes_per_step"] == weights + kv
    assert rec["flops_per_step"] == bench.step_flops(tiny_model.config, 1, 8 + 3)  # the same average length
    assert math.isclose(rec["sol_tok_s"], 10e9 / (weights + kv))
    assert "tokens/s decoding" in bench.describe(rec)


def test_generation_with_a_batch_and_a_custom_generate_fn(tiny_model, tokenizer):
    def fake(ids, n):
        return torch.cat([ids, ids[:, :1].repeat(1, n)], dim=1)

    rec = bench.generation(
        tiny_model, tokenizer, prompt_len=4, new_tokens=3, batch=3, warmup=0, repeats=1, generate_fn=fake, bandwidth=1e9
    )
    assert rec["batch"] == 3 and rec["new_tokens"] == 3


def test_generation_rejects_bad_lengths(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="at least 2"):
        bench.generation(tiny_model, tokenizer, new_tokens=1)
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        bench.generation(tiny_model, tokenizer, prompt_len=100, new_tokens=100)
    with pytest.raises(RuntimeError, match="expected 5"):
        bench.generation(tiny_model, tokenizer, prompt_len=4, new_tokens=5, generate_fn=lambda ids, n: ids)


def test_prompt_ids_has_the_asked_shape(tokenizer):
    ids = bench.prompt_ids(tokenizer, 300, batch=2)
    assert ids.shape == (2, 300) and ids[0].equal(ids[1])


class Uniform(torch.nn.Module):
    """A model that gives every token the same score: its perplexity is the vocabulary size."""

    def __init__(self, vocab, n_positions=64):
        super().__init__()
        self.config = type("C", (), {"n_positions": n_positions})()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab = vocab

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.w
        return type("O", (), {"logits": logits})()


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    tokens = torch.randint(0, 50, (300,))
    assert math.isclose(
        evaluate.perplexity(Uniform(50), tokens, context=64, stride=16, progress=False), 50, rel_tol=1e-5
    )


def test_every_token_is_scored_once():
    for n, ctx, stride in [(300, 64, 16), (64, 64, 32), (65, 64, 64), (1000, 128, 100)]:
        scored = []
        for begin, end, first in evaluate._windows(n, ctx, stride):
            assert end - begin <= ctx
            scored.extend(range(begin + first, end))
        assert scored == list(range(1, n)), (n, ctx, stride)


def test_perplexity_rejects_bad_arguments(tiny_model):
    with pytest.raises(ValueError, match="1-D"):
        evaluate.perplexity(tiny_model, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="longer than the model"):
        evaluate.perplexity(tiny_model, torch.zeros(300, dtype=torch.long), context=1000)


def test_greedy_agreement(tiny_model, tokenizer):
    import copy

    assert evaluate.greedy_agreement(tiny_model, tiny_model, tokenizer, ["def f(x):"], new_tokens=8) == 1.0
    other = copy.deepcopy(tiny_model)
    torch.manual_seed(5)
    for p in other.parameters():
        p.data = torch.randn_like(p)
    assert evaluate.greedy_agreement(tiny_model, other, tokenizer, ["def f(x):", "import os"], new_tokens=16) < 0.5


def test_forward_step_times_one_token_per_sequence(tiny_model):
    calls = []
    hook = tiny_model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        rec = bench.forward_step(tiny_model, batch=3, warmup=1, repeats=2, inner=4)
    finally:
        hook.remove()
    # one first call, then (warmup + repeats) x inner timed steps, all with 3 sequences of 1 token
    assert calls == [torch.Size([3, 1])] * (1 + (1 + 2) * 4)
    assert rec["batch"] == 3 and rec["mode"] == "eager"
    assert rec["tok_s"] == pytest.approx(3 / (rec["step_ms"] / 1e3))
    assert rec["first_call_s"] > 0


def test_a_slow_prefill_keeps_the_decode_speed_and_its_spread_consistent(tiny_model, tokenizer, monkeypatch):
    """A prefill that is most of the total (fp16 emulated on a CPU) must not floor the decode speed."""
    from helpers import bench

    calls = []

    def fake_time_fn(fn, warmup=2, repeats=5, device=None):
        calls.append(1)
        if len(calls) == 1:  # the one-token run: a slow prefill
            return {"median": 3.4, "min": 3.4, "max": 3.5, "times": []}
        return {"median": 4.8, "min": 4.75, "max": 4.9, "times": []}  # 12 tokens: 1.4 s of decoding

    monkeypatch.setattr(bench, "time_fn", fake_time_fn)
    rec = bench.generation(tiny_model, tokenizer, prompt_len=8, new_tokens=12, bandwidth=1e10)
    assert rec["decode_tok_s"] == pytest.approx(11 / 1.4) and not rec["timing_noisy"]
    assert rec["decode_tok_s_min"] <= rec["decode_tok_s"] <= rec["decode_tok_s_max"]


def test_step_speed_spans_the_repeats(tiny_model):
    rec = bench.forward_step(tiny_model, 2, warmup=1, repeats=3, inner=2)
    span = bench.step_speed(rec)
    assert span["min"] <= span["median"] <= span["max"]
    assert span["median"] == rec["tok_s"]
    assert span["min"] == 2e3 / rec["step_ms_max"]


def test_step_weight_bytes_counts_what_a_step_reads(tiny_model):
    import copy
    import warnings

    from torch import nn
    from torch.ao.quantization import quantize_dynamic

    from helpers import models, quant

    cfg = tiny_model.config
    fp32 = bench.step_weight_bytes(tiny_model)
    # tied: the token table is read whole (by the output layer); the position table one row
    assert fp32 == models.param_bytes(tiny_model) - (cfg.n_positions - 1) * cfg.n_embd * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_dynamic(models.conv1d_to_linear(copy.deepcopy(tiny_model)), {nn.Linear}, dtype=torch.qint8)
    blocks = sum(layer.weight.numel() for _, _, layer in quant.block_linears(tiny_model))
    head = cfg.vocab_size * cfg.n_embd
    # every linear layer now reads 1 byte per weight instead of 4; the untied token table one row
    assert bench.step_weight_bytes(q) == fp32 - 3 * (blocks + head) + cfg.n_embd * 4


def test_step_weight_bytes_counts_torchao_weights_as_stored():
    from torch import nn
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    layer = nn.Sequential(nn.Linear(64, 32, bias=False))
    assert bench.step_weight_bytes(layer) == 64 * 32 * 4
    quantize_(layer, Int8WeightOnlyConfig())
    stored = bench.step_weight_bytes(layer)
    assert 64 * 32 + 32 * 4 <= stored < 64 * 32 * 2  # int8 codes and one fp32 scale per row, far from fp32


def test_cache_perplexity_through_a_float_cache_is_the_models_own(tiny_model):
    """Through a float KV cache, the windows' perplexity is what the model's own forward pass gives on the
    same windows; an int8 cache changes it a little, not a lot."""
    import torch.nn.functional as F

    from helpers import fastgen

    torch.manual_seed(0)
    tokens = torch.randint(0, tiny_model.config.vocab_size, (300,))
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, 299, 128):
            window = tokens[start : start + 128][None, :]
            logits = tiny_model(window).logits[0, :-1]
            nll += F.cross_entropy(logits, window[0, 1:], reduction="sum").item()
            count += window.shape[1] - 1
    fast = fastgen.FastGPT2(tiny_model)
    assert evaluate.cache_perplexity(fast, tokens) == pytest.approx(math.exp(nll / count), rel=1e-4)
    int8 = evaluate.cache_perplexity(fastgen.FastGPT2(tiny_model, kv_cache="int8"), tokens)
    assert int8 == pytest.approx(math.exp(nll / count), rel=0.02)
    assert fast.generate(tokens[:5][None, :], 3).shape == (1, 8)  # decoding still works after it
    with pytest.raises(ValueError, match="1-D"):
        evaluate.cache_perplexity(fast, tokens[None, :])
