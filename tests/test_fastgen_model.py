"""helpers.fastgen.model: the eager decoder gives GPT-2's logits, and its KV cache is written in place."""

import torch

from helpers.fastgen import model as fm


def test_kv_cache_update_writes_in_place_and_returns_the_whole_cache():
    cache = fm.KVCache(batch=2, n_head=3, length=8, head_dim=4, dtype=torch.float32, device="cpu")
    k, v = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4)
    before = cache.k.data_ptr()
    full_k, full_v = cache.update(torch.tensor([5, 6]), k, v)
    assert full_k.shape == (2, 3, 8, 4) and full_k.data_ptr() == before  # the same buffer: shapes never change
    assert torch.equal(full_k[:, :, 5:7], k) and torch.equal(full_v[:, :, 5:7], v)
    assert full_k[:, :, :5].abs().sum() == 0  # positions not written stay as they were


def test_the_decoder_gives_gpt2s_logits_for_a_prompt_and_then_one_step(tiny_model):
    decoder = fm.Decoder(tiny_model, torch.float32)
    ids = torch.arange(10)[None]  # (1, 10)
    assert decoder.setup_caches(1, 16) and not decoder.setup_caches(1, 16)  # a second call changes nothing
    with torch.no_grad():
        ref = tiny_model(input_ids=ids).logits  # (1, 10, V)
        prompt = decoder(ids[:, :9], decoder.arange[:9])  # the prompt fills positions 0..8
        step = decoder(ids[:, 9:], decoder.arange[9:10])  # one token at position 9, from the cache
    torch.testing.assert_close(prompt, ref[:, 8], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(step, ref[:, 9], rtol=1e-4, atol=1e-4)


def test_weight_bytes_counts_the_tied_output_layer_once(tiny_model):
    decoder = fm.Decoder(tiny_model, torch.float32)
    n = sum(p.numel() for p in tiny_model.parameters())  # transformers ties lm_head to wte: counted once
    assert decoder.weight_bytes() == 4 * n


def test_written_out_attention_equals_sdpa_and_stays_finite_on_padding():
    import torch.nn.functional as F

    from helpers.fastgen.model import attention

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    mask = torch.ones(2, 1, 4, 6, dtype=torch.bool).tril(2)
    torch.testing.assert_close(attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    mask[0, :, 0] = False  # a padding query that may see no key at all
    assert torch.isfinite(attention(q, k, v, mask)).all()


def test_a_compiled_cpu_step_with_written_out_attention_matches_generate_on_a_padded_batch(tiny_model, tokenizer):
    from helpers import fastgen

    tokenizer.padding_side = "left"
    enc = tokenizer(["def main():", "x = 1\nfor i in range(3):"], return_tensors="pt", padding=True)
    eager = fastgen.FastGPT2(tiny_model, compile=False)
    compiled = fastgen.FastGPT2(tiny_model, compile=True)
    assert not any(b.sdpa for b in compiled.model.blocks)
    a = eager.generate(enc["input_ids"], 8, attention_mask=enc["attention_mask"])
    assert torch.equal(a, compiled.generate(enc["input_ids"], 8, attention_mask=enc["attention_mask"]))


def test_int8_kv_cache_keeps_a_scale_per_head_and_position():
    cache = fm.Int8KVCache(batch=2, n_head=3, length=8, head_dim=4, dtype=torch.float32, device="cpu")
    torch.manual_seed(0)
    k, v = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4) * 100
    full_k, full_v = cache.update(torch.tensor([5, 6]), k, v)
    assert cache.k_codes.dtype == torch.int8 and cache.k_scale.shape == (2, 3, 8, 1)
    for got, want in ((full_k, k), (full_v, v)):
        step = want.abs().amax(-1, keepdim=True) / 127  # each position's own scale, however large v is
        assert ((got[:, :, 5:7] - want).abs() <= step / 2 + 1e-6).all()
    assert (full_k[:, :, :5] == 0).all()  # positions never written stay zero
    assert cache.bytes_per_position() == 2 * 3 * (4 + 4)  # int8 codes plus one fp32 scale, keys and values


def test_an_int8_kv_cache_decodes_the_tiny_model_and_refuses_unknown_kinds(tiny_model, tokenizer):
    import pytest

    from helpers import fastgen

    ids = tokenizer("def main():", return_tensors="pt")["input_ids"]
    fast = fastgen.FastGPT2(tiny_model, kv_cache="int8")
    out = fast.generate(ids, 8)
    assert out.shape == (1, ids.shape[1] + 8)
    assert isinstance(fast.model.blocks[0].cache, fm.Int8KVCache)
    with pytest.raises(ValueError, match="kv_cache takes"):
        fastgen.FastGPT2(tiny_model, kv_cache="fp8")
