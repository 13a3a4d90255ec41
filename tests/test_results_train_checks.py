import json

import pytest
import torch

from helpers import checks, recipe, results, train


def test_result_log_round_trip(tmp_path):
    assert results.load() == []
    results.record({"label": "a", "decode_tok_s": 10.0}, notebook="00")
    results.record({"label": "b", "decode_tok_s": 20.0}, notebook="01", device="cpu")
    rows = results.load()
    assert [r["label"] for r in rows] == ["a", "b"]
    assert results.load(notebook="01")[0]["device"] == "cpu"
    assert json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])["notebook"] == "00"
    text = results.table(rows, ["label", "decode_tok_s"], ["what", "tokens/s"])
    assert text.splitlines()[0] == "| what | tokens/s |" and "| b | 20.00 |" in text
    with pytest.raises(ValueError):
        results.table(rows, ["label"], ["a", "b"])
    blanks = results.table([{"label": "c", "decode_tok_s": None}, {"label": "d"}], ["label", "decode_tok_s"])
    assert blanks.splitlines()[2:] == ["| c | - |", "| d | - |"]  # never "None"


def test_plots_draw_every_record():
    import matplotlib

    matplotlib.use("Agg")
    rows = [
        {"label": "x", "decode_tok_s": 5.0, "sol_tok_s": 50.0, "perplexity": 9.0},
        {"label": "y", "decode_tok_s": 15.0, "sol_tok_s": 60.0, "perplexity": 11.0},
    ]
    ax = results.plot_tokens_per_s(rows)
    assert len(ax.patches) == 2
    ax = results.plot_quality_vs_speed(rows)
    assert len(ax.collections) == 2


def test_learning_rate_schedule():
    cfg = train.TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert train.lr_at(0, cfg) == pytest.approx(0.1)
    assert train.lr_at(9, cfg) == pytest.approx(1.0)
    assert train.lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert train.lr_at(55, cfg) == pytest.approx(0.55, abs=1e-2)


def test_training_lowers_the_loss_and_keeps_the_best(tmp_path, tokenizer):
    model = recipe.make_model(dict(n_layer=1, n_embd=32, n_head=2), n_positions=64, dropout=0.0)
    stream = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8] * 200)
    cfg = train.TrainConfig(
        steps=60, batch_size=8, block_size=32, lr=3e-3, warmup_steps=5, eval_every=20, eval_batches=2
    )
    before = train.evaluate_loss(model, stream, cfg, torch.device("cpu"))
    out = train.train(model, stream, stream, cfg, out_dir=tmp_path / "m", tokenizer=tokenizer, progress=False)
    assert out["best_val_loss"] < before / 3, (before, out["best_val_loss"])
    assert [row["step"] for row in out["history"]] == [20, 40, 60]
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "tokenizer.json").exists()


def test_training_needs_enough_tokens():
    with pytest.raises(ValueError, match="Need more than"):
        train.get_batch(torch.arange(10), 2, 32, torch.Generator(), torch.device("cpu"))


def test_tokenizer_training_round_trips():
    from helpers import data

    texts = [data.read(p) for p in data.files("train")[:5]]
    tok = recipe.train_tokenizer(texts, vocab_size=400)
    assert len(tok) == 400
    sample = "def g(y):\n    return y\n<|endoftext|>\nimport sys"
    ids = tok(sample)["input_ids"]
    assert tok.decode(ids) == sample and ids.count(tok.eos_token_id) == 1


def test_the_bundled_card_matches_the_weights():
    from helpers import models

    card = json.loads((models.folder("pocket") / "card.json").read_text())
    assert models.verify(models.folder("pocket")) == {f: v["sha256"] for f, v in card["files"].items()}
    assert recipe.render_card(card) == (models.folder("pocket") / "README.md").read_text()
    total = sum(p.stat().st_size for name in ("pocket", "pocket-draft") for p in models.folder(name).iterdir())
    assert total <= recipe.MAX_BUNDLE_MB * 1e6, total
    assert all(v["bytes"] < 16 * 2**20 for v in card["files"].values())


def test_model_bytes_check_explains_mistakes():
    assert checks.check_model_bytes(400, 100, 4)
    with pytest.raises(AssertionError, match="counted parameters, not bytes"):
        checks.check_model_bytes(100, 100, 4)
    with pytest.raises(AssertionError, match="bits, not bytes"):
        checks.check_model_bytes(3200, 100, 4)


def test_bandwidth_check_explains_mistakes():
    assert checks.check_bandwidth_limit(100.0, model_bytes=1e9, bandwidth=100e9)
    with pytest.raises(AssertionError, match="bytes per second, not GB/s"):
        checks.check_bandwidth_limit(100.0 / 1e9, model_bytes=1e9, bandwidth=100e9)
    with pytest.raises(AssertionError, match="left out the batch"):
        checks.check_bandwidth_limit(100.0, model_bytes=1e9, bandwidth=100e9, batch=8)


def test_check_number_rejects_non_numbers_and_gives_the_ratio():
    with pytest.raises(AssertionError, match="got str"):
        checks.check_number("12", 12.0, unit="ms")
    with pytest.raises(AssertionError, match="got bool"):
        checks.check_number(True, 1.0, unit="ms")
    with pytest.raises(AssertionError, match="3x the expected"):
        checks.check_number(36.0, 12.0, unit="ms")


def test_kv_cache_check_explains_mistakes():
    args = dict(n_layer=12, n_embd=768, tokens=1024, batch=8, bytes_per_value=2)
    right = 2 * 12 * 1024 * 768 * 8 * 2
    assert checks.check_kv_cache_bytes(right, **args)
    with pytest.raises(AssertionError, match="only K or only V"):
        checks.check_kv_cache_bytes(right / 2, **args)
    with pytest.raises(AssertionError, match="one layer"):
        checks.check_kv_cache_bytes(right / 12, **args)


def test_loss_scale_check_explains_mistakes():
    assert checks.check_loss_scale(2**16, smallest_grad=1e-9, largest_grad=0.5)
    with pytest.raises(AssertionError, match="Too small"):
        checks.check_loss_scale(1.0, smallest_grad=1e-9, largest_grad=0.5)
    with pytest.raises(AssertionError, match="Too large"):
        checks.check_loss_scale(2**20, smallest_grad=1e-9, largest_grad=0.5)
    with pytest.raises(AssertionError, match="positive number"):
        checks.check_loss_scale(-1, smallest_grad=1e-9, largest_grad=0.5)


def test_a_miss_shows_small_expected_values_readably():
    with pytest.raises(AssertionError, match=r"expected about 0\.6 of the slot-steps"):
        checks.check_number(1.0, 0.6, unit="of the slot-steps")
    with pytest.raises(AssertionError, match=r"expected about 24,194 tokens/s"):
        checks.check_number(1.0, 3.0e12 / 124e6, unit="tokens/s")
