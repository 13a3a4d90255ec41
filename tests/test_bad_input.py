"""Bad input and faults: each case gives a clear error that says what to do, or is handled without loss.

Every test here failed (silently wrong, hanging, or with an unclear error) before the checks it pins.
"""

import json
import shutil

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import bench, evaluate, fastgen, ladder, models, notebook, results

# ---- environment variables ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2", "y", "enabled"])
def test_an_unclear_quick_flag_is_refused(monkeypatch, value):
    monkeypatch.setenv("WORKBOOK_QUICK", value)
    with pytest.raises(ValueError, match="WORKBOOK_QUICK=.*use 1 .* or 0"):
        notebook.is_quick()


@pytest.mark.parametrize(("value", "quick"), [("1", True), ("ON", True), ("off", False), ("", False)])
def test_clear_quick_flags_are_read(monkeypatch, value, quick):
    monkeypatch.setenv("WORKBOOK_QUICK", value)
    assert notebook.is_quick() is quick


def test_hf_hub_offline_on_means_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "on")
    assert models.hub_reachable(timeout=0.01) is False


# ---- the result log -------------------------------------------------------------------------


def test_a_results_path_that_is_not_jsonl_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_RESULTS", str(tmp_path / "my-table.csv"))
    with pytest.raises(ValueError, match=r"must be a \.jsonl file"):
        results.record({"x": 1}, notebook="t")


def test_a_cut_last_line_neither_glues_nor_loses_records(tmp_path, monkeypatch):
    log = tmp_path / "results.jsonl"
    monkeypatch.setenv("WORKBOOK_RESULTS", str(log))
    results.record({"x": 1}, notebook="t")
    with open(log, "a") as f:
        f.write('{"x": 2, "notebo')  # a crash in the middle of a write
    results.record({"x": 3}, notebook="t")
    with pytest.warns(UserWarning, match=r"results\.jsonl:2 is not a JSON record"):
        rows = results.load()
    assert [r["x"] for r in rows] == [1, 3]


# ---- weights you can trust ------------------------------------------------------------------


@pytest.fixture
def pocket_copy(tmp_path):
    folder = tmp_path / "pocket"
    shutil.copytree(models.folder("pocket-draft"), folder)
    return folder


def test_an_unlisted_weight_file_is_refused(pocket_copy):
    shutil.copy(pocket_copy / "model.safetensors", pocket_copy / "extra.safetensors")
    with pytest.raises(models.ChecksumError, match="does not list: extra.safetensors"):
        models.verify(pocket_copy)


def test_an_empty_manifest_is_refused(pocket_copy):
    (pocket_copy / "SHA256SUMS").write_text("\n")
    with pytest.raises(models.ChecksumError, match="lists no files"):
        models.verify(pocket_copy)


def test_a_malformed_manifest_line_is_named(pocket_copy):
    sums = pocket_copy / "SHA256SUMS"
    sums.write_text(sums.read_text() + "garbage\n")
    with pytest.raises(models.ChecksumError, match=r"SHA256SUMS:\d+ is not a 'sha256  file' line"):
        models.verify(pocket_copy)


def test_a_mirror_folder_with_only_bin_weights_says_so(tmp_path, monkeypatch):
    folder = tmp_path / "distilgpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    monkeypatch.setenv("WORKBOOK_HUB_MIRROR", str(tmp_path))
    with pytest.raises(models.NotGPT2Error, match="no safetensors weights"):
        models.load("distilgpt2", device="cpu")


def test_auto_with_a_mirror_says_the_mirror_chose(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORKBOOK_HUB_MIRROR", str(tmp_path))
    assert models.resolve("auto") == "gpt2"
    assert "WORKBOOK_HUB_MIRROR is set" in capsys.readouterr().out


# ---- inputs where they enter ----------------------------------------------------------------


def test_an_empty_tokenizer_does_not_hang_the_benchmark():
    class Empty:
        def __call__(self, text):
            return {"input_ids": []}

    with pytest.raises(ValueError, match="no tokens"):
        bench.prompt_ids(Empty(), 32)


def test_lengths_and_counts_below_one_are_refused(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="at least 1"):
        bench.generation(tiny_model, tokenizer, prompt_len=0, new_tokens=4)
    with pytest.raises(ValueError, match="at least 1"):
        bench.forward_step(tiny_model, inner=0)
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        bench.time_fn(lambda: None, repeats=0, device="cpu")
    with pytest.raises(ValueError, match="context must be at least 2"):
        evaluate.perplexity(tiny_model, torch.arange(50), context=1, stride=1)
    with pytest.raises(ValueError, match="at least one prompt"):
        evaluate.greedy_agreement(tiny_model, tiny_model, tokenizer, [])


def test_the_fast_decoder_checks_its_inputs(tiny_model):
    fast = fastgen.FastGPT2(tiny_model)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        fast.generate(ids, 4, attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="empty"):
        fast.generate(ids[:, :0], 4)
    with pytest.raises(ValueError, match="token ids must lie in 0.."):
        fast.generate(torch.tensor([[1, tiny_model.config.vocab_size]]), 4)
    with pytest.raises(ValueError, match="token ids must lie in 0.."):
        fast.generate(torch.tensor([[-1, 2]]), 4)
    with pytest.raises(ValueError, match="finite"):
        fast.generate(ids, 4, temperature=float("nan"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "tpu"], "Unknown device 'tpu'"),
        (["--prompt-len", "0"], "must be at least 1"),
        (["--repeats", "-5"], "must be at least 1"),
        (["--model", "gpt5"], "Unknown model 'gpt5'"),
    ],
)
def test_the_ladder_command_line_says_what_is_wrong(args, message, capsys):
    with pytest.raises(SystemExit):
        ladder.main(args)
    assert message in capsys.readouterr().err


def test_the_ladder_asks_for_a_gpu_it_does_not_have(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit):
        ladder.main(["--device", "cuda"])
    assert "no CUDA GPU" in capsys.readouterr().err


def test_json_safe_keeps_numbers_numbers(tmp_path):
    row = results.record({"v": torch.tensor(2.5)}, notebook="t")
    assert json.loads(results.path().read_text().splitlines()[-1])["v"] == 2.5 == row["v"]


def test_an_empty_mirror_folder_says_what_is_wrong_with_it(tmp_path, monkeypatch):
    (tmp_path / "distilgpt2").mkdir()
    monkeypatch.setenv("WORKBOOK_HUB_MIRROR", str(tmp_path))
    with pytest.raises(models.NotGPT2Error, match="no readable config.json"):
        models.load("distilgpt2", device="cpu")


def test_the_ladder_refuses_to_overwrite_before_measuring(tmp_path, capsys):
    out = tmp_path / "ladder.json"
    out.write_text("{}")
    with pytest.raises(SystemExit):
        ladder.main(["--out", str(out), "--model", "pocket"])
    assert "exists; choose another --out or pass --force" in capsys.readouterr().err
    assert out.read_text() == "{}"


def test_a_mirror_load_says_it_came_from_the_mirror(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "distilgpt2"
    shutil.copytree(models.folder("pocket-draft"), folder)
    monkeypatch.setenv("WORKBOOK_HUB_MIRROR", str(tmp_path))
    models.load("distilgpt2", device="cpu")
    assert "from the local mirror" in capsys.readouterr().out
