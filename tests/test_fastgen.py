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
        lengths.add(fast.model.blocks[0].cache.k.shape[2])  # (B, H, L, D)
    assert lengths == {fastgen.STREAM_BLOCK}  # one cache size: a compiled step would not be rebuilt
    sampled = [torch.stack(list(fast.stream(ids, 10, temperature=1.0, seed=s)), 1) for s in (4, 4)]
    assert torch.equal(*sampled)


def test_compiled_step_gives_the_same_tokens(tiny_model, tokenizer):
    ids = tokenizer("def main():", return_tensors="pt")["input_ids"]
    eager = fastgen.FastGPT2(tiny_model, compile=False).generate(ids, 12)
    fast = fastgen.FastGPT2(tiny_model, compile=True)
    compiled = fast.generate(ids, 12)
    assert torch.equal(eager, compiled)
    if fast.device.type == "cpu":  # a compiled CPU step's cache is sized in blocks (generator.CPU_CACHE_BLOCK)
        assert fast.model.length % fastgen.generator.CPU_CACHE_BLOCK == 0 and fast.model.length >= ids.shape[1] + 12
        assert torch.equal(fast.generate(ids, 20), fastgen.FastGPT2(tiny_model, compile=False).generate(ids, 20))


def test_matvec_equals_a_matrix_product():
    torch.manual_seed(0)
    w, b, x = torch.randn(48, 32), torch.randn(48), torch.randn(1, 1, 32)
    layer = fastgen.Linear(w, b, torch.float32)
    plain = layer(x)
    layer.matvec = True
    torch.testing.assert_close(layer(x), plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, x @ w.T + b)


def test_int8_reads_a_quarter_of_the_bytes_and_agrees_as_well_as_generate_with_int8(pocket, same_greedy_tokens):
    """The fast decoder's int8 path against Hugging Face generate() with the same dynamic int8 layers: on the
    same prompts, its greedy tokens agree with fp32's at least as often (rounding may change a later token)."""
    import copy
    import warnings

    from torch import nn
    from torch.ao.quantization import quantize_dynamic

    model, tok = pocket
    fp32, int8 = fastgen.FastGPT2(model), fastgen.FastGPT2(model, int8=True)
    assert int8.weight_bytes() < 0.3 * fp32.weight_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        hf_int8 = quantize_dynamic(models.conv1d_to_linear(copy.deepcopy(model)), {nn.Linear}, dtype=torch.qint8)
    (fast_same, hf_same), total = same_greedy_tokens(
        tok,
        fp32.generate,
        int8.generate,
        lambda ids, n: hf_int8.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id),
    )
    assert fast_same >= hf_same, f"fast int8 agreed on {fast_same} of {total} tokens, generate() int8 on {hf_same}"
    assert fast_same > total / 2


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
    graphed = fastgen.FastGPT2(model, graph_steps=16)  # CUDA graphs are GPU-only: ignored for a model on a CPU
    assert graphed.graph_steps == 0  # the pocket fixture lives on the CPU, also on a machine with a GPU
    assert torch.equal(graphed.generate(ids, 20), fastgen.FastGPT2(model).generate(ids, 20))


def test_triton_kernels_are_for_gpus(pocket):
    model, _ = pocket
    assert not fastgen.FastGPT2(model, graph_steps=16).kernels  # "auto" picks them on a GPU only
    with pytest.raises(ValueError, match="int8"):
        fastgen.FastGPT2(model, int8=True, kernels=True)


def test_prefill_graphs_are_for_gpus(pocket):
    model, _ = pocket
    assert not fastgen.FastGPT2(model).graph_prefill  # "auto": a CUDA graph of the prefill on a GPU only
    with pytest.raises(ValueError, match="CUDA GPU"):
        fastgen.FastGPT2(model, graph_prefill=True)
    with pytest.raises(ValueError, match="graph_prefill takes"):
        fastgen.FastGPT2(model, graph_prefill="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and the Triton step need a CUDA GPU")
def test_on_a_gpu_graphed_and_triton_steps_keep_the_tokens_of_generate(pocket):
    """The GPU paths (run on the lent GPU; CI has none): several steps per CUDA graph, with the compiled step and
    with the Triton step, in fp32, against Hugging Face generate() on the same GPU."""
    import copy

    model, tok = pocket
    gpu = copy.deepcopy(model).cuda()
    for prompt in bench.prompts()[:2]:
        ids = tok(prompt, return_tensors="pt")["input_ids"].cuda()
        ref = hf_greedy(gpu, tok, 24, input_ids=ids)
        for kw in (dict(graph_steps=16, kernels=False), dict(graph_steps=16, kernels=True)):
            fast = fastgen.FastGPT2(gpu, **kw)
            assert fast.kernels == kw["kernels"] and fast.graph_steps == 16
            assert torch.equal(fast.generate(ids, 24), ref), kw


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_on_a_gpu_a_graphed_prefill_keeps_the_tokens_for_every_prompt_shape(pocket):
    """The prefill replayed from CUDA graphs (one per prompt shape, the oldest forgotten past PREFILL_GRAPHS)
    gives the tokens of the eager prefill: greedy decoding, a padded batch, and stream() (whose cache, sized in
    blocks of positions, stays while prompts of several lengths come, so their graphs accumulate)."""
    import copy

    from helpers.fastgen import generator

    model, tok = pocket
    gpu = copy.deepcopy(model).cuda()
    graphed = fastgen.FastGPT2(gpu, graph_steps=16)
    eager = fastgen.FastGPT2(gpu, graph_steps=16, graph_prefill=False)
    assert graphed.graph_prefill and not eager.graph_prefill
    assert not fastgen.FastGPT2(gpu).graph_prefill  # the compiler's CUDA graphs: the prefill stays eager
    with pytest.raises(ValueError, match="does not mix"):
        fastgen.FastGPT2(gpu, graph_prefill=True)
    ids = tok(bench.prompts()[0], return_tensors="pt")["input_ids"].cuda()
    for t in (3, 7):
        assert torch.equal(graphed.generate(ids[:, :t], 12), eager.generate(ids[:, :t], 12)), t
    lengths = list(range(3, 3 + generator.PREFILL_GRAPHS + 2))  # more prompt shapes than are kept
    for t in [*lengths, lengths[0]]:  # and the first (forgotten) shape again
        streamed = torch.stack([x.clone() for x in graphed.stream(ids[:, :t], 10)], 1)
        assert torch.equal(streamed, eager.generate(ids[:, :t], 10)[:, t:]), t
    assert len(graphed._prefills) == generator.PREFILL_GRAPHS
    two = torch.cat([ids[:, :8], ids[:, 2:10]])
    mask = torch.ones_like(two)
    mask[1, :2] = 0  # the second prompt left-padded by two tokens
    assert torch.equal(graphed.generate(two, 10, attention_mask=mask), eager.generate(two, 10, attention_mask=mask))
