"""Speculative decoding: greedy output identical to the target's; sampling follows the target's distribution."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import bench, models, speculative


@pytest.fixture(scope="module")
def pair():
    target, tok = models.load("pocket", device="cpu", verbose=False)
    draft, _ = models.load("pocket-draft", device="cpu", verbose=False)
    return target, draft, tok


def test_greedy_output_is_the_targets(pair):
    target, draft, tok = pair
    for prompt in bench.prompts()[:2]:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        ref = target.generate(ids, max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=tok.pad_token_id)
        for k in (1, 3, 6):
            out, stats = speculative.generate(target, draft, ids, 30, k=k)
            assert torch.equal(out, ref), f"k={k}"
            assert stats["rounds"] <= 30 and 0 <= stats["acceptance"] <= 1
            assert stats["tokens_per_pass"] == pytest.approx(30 / stats["rounds"])


def test_a_draft_identical_to_the_target_is_always_accepted(pair):
    target, _, tok = pair
    ids = tok(bench.prompts()[0], return_tensors="pt")["input_ids"]
    for temperature in (0.0, 1.0):
        _, stats = speculative.generate(target, target, ids, 20, k=4, temperature=temperature, seed=0)
        assert stats["acceptance"] == 1.0


def test_sampling_is_reproducible(pair):
    target, draft, tok = pair
    ids = tok(bench.prompts()[1], return_tensors="pt")["input_ids"]
    a, _ = speculative.generate(target, draft, ids, 20, k=3, temperature=0.9, seed=5)
    b, _ = speculative.generate(target, draft, ids, 20, k=3, temperature=0.9, seed=5)
    assert torch.equal(a, b)


def test_sampled_tokens_follow_the_targets_distribution():
    torch.manual_seed(0)
    cfg = dict(vocab_size=12, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    target, draft = GPT2LMHeadModel(GPT2Config(**cfg)).eval(), GPT2LMHeadModel(GPT2Config(**cfg)).eval()
    with torch.no_grad():  # a sharper target and a flatter draft, so that p and q differ clearly
        target.transformer.ln_f.weight.mul_(20)
        draft.transformer.ln_f.weight.mul_(0.3)
    ids = torch.tensor([[3, 7]])
    with torch.no_grad():
        p = torch.softmax(target(ids).logits[0, -1], -1)
        q = torch.softmax(draft(ids).logits[0, -1], -1)
    assert 0.5 * (p - q).abs().sum() > 0.2, "the test needs a draft that disagrees with the target"
    n = 3000
    counts = torch.zeros(12)
    for seed in range(n):
        out, _ = speculative.generate(target, draft, ids, 1, k=1, temperature=1.0, seed=seed)
        counts[out[0, -1]] += 1
    assert 0.5 * (counts / n - p).abs().sum() < 0.05  # total variation from the target's distribution


def test_expected_tokens_per_pass():
    assert speculative.expected_tokens_per_pass(0.0, 4) == 1.0
    assert speculative.expected_tokens_per_pass(1.0, 4) == 5.0
    assert speculative.expected_tokens_per_pass(0.5, 2) == pytest.approx(1.75)


def test_clear_errors(pair):
    target, draft, tok = pair
    ids = tok("x = 1", return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="one sequence"):
        speculative.generate(target, draft, torch.cat([ids, ids]), 4)
    with pytest.raises(ValueError, match="k >= 1"):
        speculative.generate(target, draft, ids, 4, k=0)
    small = GPT2LMHeadModel(GPT2Config(vocab_size=10, n_positions=16, n_embd=8, n_layer=1, n_head=1))
    with pytest.raises(ValueError, match="tokenizer"):
        speculative.generate(target, small, ids, 4)
