"""The fast decoder: same greedy tokens as generate(), reproducible sampling, clear errors."""

import pytest
import torch

from helpers import bench, fastgen, models


@pytest.fixture(scope="module")
def pocket():
    model, tok = models.load("pocket", device="cpu", verbose=False)
    tok.pad_token = tok.eos_token
    return model, tok


def hf_greedy(model, tok, n, **inputs):
    return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)


def test_greedy_tokens_are_those_of_generate(pocket):
    model, tok = pocket
    fast = fastgen.FastGPT2(model)
    for prompt in bench.prompts()[:3]:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        assert torch.equal(fast.generate(ids, 40), hf_greedy(model, tok, 40, input_ids=ids))


def test_a_left_padded_batch_matches_generate(pocket):
    model, tok = pocket
    tok.padding_side = "left"
    enc = tok(bench.prompts()[:4], return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any(), "the prompts should differ in length for this test"
    fast = fastgen.FastGPT2(model)
    out = fast.generate(enc["input_ids"], 24, attention_mask=enc["attention_mask"])
    assert torch.equal(out, hf_greedy(model, tok, 24, **enc))


def test_one_left_padded_sequence_matches_generate(pocket):
    model, tok = pocket
    tok.padding_side = "left"
    enc = tok(bench.prompts()[:4], return_tensors="pt", padding=True)
    row = int(enc["attention_mask"].sum(1).argmin())  # the shortest prompt: the most padding
    ids, mask = enc["input_ids"][row : row + 1], enc["attention_mask"][row : row + 1]
    out = fastgen.FastGPT2(model).generate(ids, 24, attention_mask=mask)
    assert out.shape == (1, ids.shape[1] + 24)
    assert torch.equal(out, hf_greedy(model, tok, 24, input_ids=ids, attention_mask=mask))


def test_sampling_is_reproducible_with_a_seed(pocket):
    model, tok = pocket
    ids = tok(bench.prompts()[0], return_tensors="pt")["input_ids"]
    fast = fastgen.FastGPT2(model)
    a = fast.generate(ids, 30, temperature=1.0, top_k=50, seed=7)
    b = fast.generate(ids, 30, temperature=1.0, top_k=50, seed=7)
    c = fast.generate(ids, 30, temperature=1.0, top_k=50, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(fast.generate(ids, 30, temperature=1.0, top_k=1, seed=3), fast.generate(ids, 30))


def test_stream_yields_the_tokens_of_generate_and_reuses_its_cache(pocket):
    model, tok = pocket
    fast = fastgen.FastGPT2(model)
    lengths = set()
    for prompt in bench.prompts()[:3]:  # prompts of different lengths, all within one block of positions
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        streamed = torch.stack(list(fast.stream(ids, 20)), dim=1)
        assert torch.equal(torch.cat([ids, streamed], dim=1), fast.generate(ids, 20))
        list(fast.stream(ids, 20))
        lengths.add(fast.k_cache.shape[3])
    assert lengths == {fastgen.STREAM_BLOCK}  # one cache size: a compiled step would not be rebuilt
    sampled = [torch.stack(list(fast.stream(ids, 10, temperature=1.0, seed=s)), 1) for s in (4, 4)]
    assert torch.equal(*sampled)


def test_compiled_step_gives_the_same_tokens(tiny_model, tokenizer):
    ids = tokenizer("def main():", return_tensors="pt")["input_ids"]
    eager = fastgen.FastGPT2(tiny_model, compile=False).generate(ids, 12)
    compiled = fastgen.FastGPT2(tiny_model, compile=True).generate(ids, 12)
    assert torch.equal(eager, compiled)


def test_matvec_equals_a_matrix_product():
    torch.manual_seed(0)
    w, b, x = torch.randn(48, 32), torch.randn(48), torch.randn(1, 1, 32)
    layer = fastgen.Linear(w, b, torch.float32)
    plain = layer(x)
    layer.matvec = True
    torch.testing.assert_close(layer(x), plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, x @ w.T + b)


def test_int8_reads_a_quarter_of_the_bytes_and_still_agrees(pocket):
    model, tok = pocket
    fp32, int8 = fastgen.FastGPT2(model), fastgen.FastGPT2(model, int8=True)
    assert int8.weight_bytes() < 0.3 * fp32.weight_bytes()
    ids = tok(bench.prompts()[1], return_tensors="pt")["input_ids"]
    a, b = fp32.generate(ids, 16), int8.generate(ids, 16)
    assert a.shape == b.shape
    assert (a == b).float().mean() > 0.5  # rounding may change a later token, not most of them


def test_clear_errors(pocket, tiny_model):
    model, tok = pocket
    fast = fastgen.FastGPT2(model)
    ids = tok("x = 1", return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="positions"):
        fast.generate(ids, model.config.n_positions)
    with pytest.raises(ValueError, match="left padding"):
        fast.generate(
            torch.cat([ids, ids], 0),
            4,
            attention_mask=torch.tensor([[1] * ids.shape[1], [1, 0] + [1] * (ids.shape[1] - 2)]),
        )
    with pytest.raises(ValueError, match="at least one real token"):
        fast.generate(ids, 4, attention_mask=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="batch, tokens"):
        fast.generate(ids[0], 4)
    with pytest.raises(ValueError, match="float32"):
        fastgen.FastGPT2(tiny_model, dtype=torch.bfloat16, int8=True)


def test_graph_steps_only_change_the_gpu_path(pocket):
    model, tok = pocket
    ids = tok(bench.prompts()[2], return_tensors="pt")["input_ids"]
    graphed = fastgen.FastGPT2(model, graph_steps=16)  # CUDA graphs are GPU-only: ignored on a CPU
    assert graphed.graph_steps == (16 if torch.cuda.is_available() else 0)
    assert torch.equal(graphed.generate(ids, 20), fastgen.FastGPT2(model).generate(ids, 20))


def test_triton_kernels_are_for_gpus(pocket):
    model, _ = pocket
    assert not fastgen.FastGPT2(model, graph_steps=16).kernels  # "auto" picks them on a GPU only
    with pytest.raises(ValueError, match="int8"):
        fastgen.FastGPT2(model, int8=True, kernels=True)


KERNEL_CHECK = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from helpers import fastgen

torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))  # LayerNorm scales and biases away from 1 and 0
    for block in model.transformer.h:
        block.attn.c_attn.weight.mul_(10)  # sharp attention: its blocks' running maxima differ
ids = torch.randint(0, 300, (1, 10))
fastgen.ATTN_BLOCK = 16  # 34 positions: attention runs over 3 blocks of the cache
fastgen.KERNEL_CONFIGS.update(attn=(8, 4), mlp=(16, 4))  # 4 programs per head, 8 for the MLP: their sums meet
fast = fastgen.FastGPT2(model, kernels=True)
assert torch.equal(fast.generate(ids, 24), fastgen.FastGPT2(model).generate(ids, 24))
fast._allocate(1, 40)
fast.pad.zero_()
fast.forward(ids, fast.arange[:10])
fast._tok.fill_(7)
fast._pos.fill_(10)
fast._kernel_step()
logits = fast.forward(torch.tensor([[7]]), fast.arange[10:11])[0]
torch.testing.assert_close(fast._ws.logits, logits, rtol=1e-4, atol=1e-5)
assert fast._out[0, 11] == logits.argmax() and fast._tok.item() == logits.argmax() and fast._pos.item() == 11
padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)  # one left-padded sequence: the padding is dropped
mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
assert torch.equal(fast.generate(padded, 8, attention_mask=mask)[:, 3:], fastgen.FastGPT2(model).generate(ids, 8))
odd = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=48, n_layer=1, n_head=2)).eval()
try:
    fastgen.FastGPT2(odd, kernels=True)
    raise AssertionError("a head size of 24 was accepted")
except ValueError as e:
    assert "power of 2" in str(e), e
"""


def test_triton_kernels_compute_the_same_step_in_the_interpreter():
    """The hand-written decode step, run by Triton's interpreter on the CPU: same logits, same greedy tokens."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")  # read when the kernels are defined: a fresh process
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
