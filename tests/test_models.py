import shutil

import pytest
import torch

from helpers import models


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(models.UnknownModelError) as err:
        models.load("gpt5")
    for name in models.NAMES + ("auto",):
        assert name in str(err.value)


def test_auto_picks_pocket_when_the_hub_is_unreachable(monkeypatch, capsys):
    monkeypatch.setenv("WORKBOOK_MODEL", "auto")
    assert models.resolve() == "pocket"
    assert "did not answer" in capsys.readouterr().out
    monkeypatch.setenv("WORKBOOK_MODEL", "pocket-draft")
    assert models.resolve() == "pocket-draft"


def test_pocket_loads_verified_and_generates(tokenizer):
    model, tok = models.load("pocket", device="cpu", verbose=False)
    assert model.training is False
    assert next(model.parameters()).dtype == torch.float32
    assert len(tok) == model.config.vocab_size
    ids = tok("def add(a, b):\n    return", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 8


def test_pocket_draft_shares_the_tokenizer(tokenizer):
    draft, tok = models.load("pocket-draft", device="cpu", verbose=False)
    assert draft.config.n_layer <= 2
    assert tok.get_vocab() == tokenizer.get_vocab()


def test_pocket_is_better_than_its_draft_and_than_chance(tokenizer):
    from helpers import data, evaluate

    tokens = data.eval_tokens(tokenizer, budget=2048)
    pocket, _ = models.load("pocket", device="cpu", verbose=False)
    draft, _ = models.load("pocket-draft", device="cpu", verbose=False)
    p_pocket = evaluate.perplexity(pocket, tokens, context=256, progress=False)
    p_draft = evaluate.perplexity(draft, tokens, context=256, progress=False)
    assert p_pocket < p_draft < len(tokenizer) / 10, (p_pocket, p_draft)


def _copy_pocket(tmp_path):
    target = tmp_path / "pocket-gpt2"
    shutil.copytree(models.folder("pocket"), target)
    return target


def test_missing_weight_file_is_a_clear_error(tmp_path):
    folder = _copy_pocket(tmp_path)
    victim = next(folder.glob("*.safetensors"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        models.verify(folder)
    (folder / "SHA256SUMS").unlink()
    with pytest.raises(FileNotFoundError, match="SHA256SUMS is missing"):
        models.verify(folder)


def test_wrong_sha256_is_refused(tmp_path):
    folder = _copy_pocket(tmp_path)
    victim = next(folder.glob("*.safetensors"))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(models.ChecksumError, match="damaged or was changed"):
        models.verify(folder)


def test_hub_name_offline_suggests_pocket():
    with pytest.raises(RuntimeError, match="WORKBOOK_MODEL=pocket"):
        models.load("distilgpt2", verbose=False)


def test_hub_path_with_a_local_gpt2_checkpoint(tmp_path, monkeypatch, tokenizer):
    """The Hub code path, fed a checkpoint of the real GPT-2 124M architecture from a folder."""
    reference = models.random_gpt2_124m(seed=1).eval()
    reference.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    monkeypatch.setenv("WORKBOOK_HUB_MIRROR", str(tmp_path))
    monkeypatch.setenv("WORKBOOK_MODEL", "auto")
    assert models.resolve(verbose=False) == "gpt2"
    model, tok = models.load(device="cpu", verbose=False)
    assert models.count_params(model) == models.count_params(reference) == 124_439_808
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    with pytest.raises(FileNotFoundError, match="WORKBOOK_HUB_MIRROR"):
        models.load("gpt2-medium", verbose=False)


def test_random_124m_has_gpt2_shape():
    model = models.random_gpt2_124m()
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_positions) == (12, 768, 12, 50257, 1024)
    assert models.param_bytes(model) >= models.count_params(model) * 4


def test_conv1d_to_linear_keeps_the_function(tiny_model):
    import copy

    from transformers.pytorch_utils import Conv1D

    converted = models.conv1d_to_linear(copy.deepcopy(tiny_model))
    assert not any(isinstance(m, Conv1D) for m in converted.modules())
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in converted.modules())
    assert n_linear == 4 * tiny_model.config.n_layer + 1  # c_attn, c_proj, c_fc, mlp c_proj per layer + lm_head
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, tiny_model(ids).logits, rtol=1e-5, atol=1e-5)
