"""Bring your own GPT-2: a folder saved with save_pretrained loads through WORKBOOK_MODEL and works with every
helper that takes a model; a checkpoint that is not a GPT-2, or has no tokenizer, is refused with what was found.

The model has another shape than any of the zoo's: 3 layers, 120 wide, 6 heads (a head size of 20, not a
power of 2), a vocabulary of 1,000 with its own tokenizer, 64 positions.
"""

import shutil

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import bench, data, evaluate, fastgen, leaderboard, models, prune, quant, recipe, speculative


@pytest.fixture(scope="module")
def own_gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("my-gpt2")
    tok = recipe.train_tokenizer([data.read(p) for p in data.files("train")[:5]], vocab_size=1000)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=1000, n_positions=64, n_embd=120, n_layer=3, n_head=6)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_folder_loads_through_workbook_model(own_gpt2, monkeypatch, capsys):
    monkeypatch.setenv("WORKBOOK_MODEL", str(own_gpt2))
    model, tok = models.load(device="cpu")
    assert model.config.n_layer == 3 and len(tok) == 1000
    assert "folder" in capsys.readouterr().out


def test_unset_workbook_model_is_the_pocket_model(monkeypatch):
    monkeypatch.delenv("WORKBOOK_MODEL", raising=False)
    assert models.resolve() == "pocket"


def test_every_helper_takes_the_own_gpt2(own_gpt2):
    model, tok = models.load(str(own_gpt2), device="cpu", verbose=False)
    rec = bench.generation(model, tok, prompt_len=8, new_tokens=4, repeats=1, warmup=0, bandwidth=1e10)
    assert rec["decode_tok_s"] > 0 and rec["new_tokens"] == 4
    ids = evaluate.standard_tokens(tok)[:300]
    assert 1 < evaluate.perplexity(model, ids, context=64, stride=32) < 10_000
    q = quant.int8_dynamic(GPT2LMHeadModel(model.config).eval())
    assert q(input_ids=ids[None, :8]).logits.shape == (1, 8, 1000)
    pruned = prune.magnitude_prune(model, 0.5)
    assert prune.sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    prompt = ids[None, :8]
    hf = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    fast = fastgen.FastGPT2(model)  # head size 20: the CPU path (no Triton step), same tokens
    assert torch.equal(fast.generate(prompt, 10), hf)
    out, stats = speculative.generate(model, model, prompt, 10, k=3)
    assert torch.equal(out, hf) and stats["acceptance"] == 1.0
    row = leaderboard.entry(
        "own",
        lambda: {"tok_s": rec["decode_tok_s"], "perplexity": 1.0, "MiB": 1.0},
        model_name=str(own_gpt2),
        device_name="cpu",
        notebook="test",
    )
    assert row["source"] == "measured now"


def test_a_llama_folder_is_refused_with_what_was_found(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(models.NotGPT2Error, match="'llama' model .*LlamaForCausalLM.*GPT-2 checkpoints"):
        models.load(str(tmp_path), device="cpu")


def test_a_llama_in_the_hub_mirror_is_refused_too(tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "distilgpt2")
    monkeypatch.setenv("WORKBOOK_HUB_MIRROR", str(tmp_path))
    with pytest.raises(models.NotGPT2Error, match="'llama' model"):
        models.load("distilgpt2", device="cpu")


def test_a_folder_without_tokenizer_is_refused(own_gpt2, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(own_gpt2 / f, bare / f)
    with pytest.raises((models.NotGPT2Error, OSError, ValueError), match="(?i)tokenizer|vocab"):
        models.load(str(bare), device="cpu")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(own_gpt2, tmp_path):
    small = tmp_path / "small"
    shutil.copytree(own_gpt2, small)
    for f in small.glob("*token*"):
        f.unlink()
    for f in ("vocab.json", "merges.txt"):
        if (small / f).exists():
            (small / f).unlink()
    _, pocket_tok = models.load("pocket", device="cpu", verbose=False)
    pocket_tok.save_pretrained(small)  # 8,192 tokens for a 1,000-token model
    with pytest.raises(models.NotGPT2Error, match="8192 tokens but the model's vocabulary has 1000"):
        models.load(str(small), device="cpu")


def test_a_name_that_is_neither_is_refused_with_the_choices():
    with pytest.raises(models.UnknownModelError, match="save_pretrained.*Hub id"):
        models.load("gpt5", device="cpu")


def test_a_gpt2_hub_id_loads_through_the_same_code(own_gpt2, tmp_path, monkeypatch, capsys):
    """A Hub id (owner/name) of a GPT-2 loads through the Hub path; here from a local mirror of the Hub."""
    shutil.copytree(own_gpt2, tmp_path / "someone" / "tiny-gpt2")
    monkeypatch.setenv("WORKBOOK_HUB_MIRROR", str(tmp_path))
    monkeypatch.setenv("WORKBOOK_MODEL", "someone/tiny-gpt2")
    model, tok = models.load(device="cpu")
    assert model.config.n_embd == 120 and len(tok) == 1000
    assert "someone/tiny-gpt2 from the local mirror" in capsys.readouterr().out
