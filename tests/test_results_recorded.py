"""helpers.results: verdicts from measurements, the result log and recorded runs."""

import json

import pytest
import torch

from helpers import results


def test_verdict_says_within_noise_when_ranges_overlap():
    text = results.verdict({"median": 100, "min": 95, "max": 104}, (98, 96, 99), names=("new", "old"))
    assert "1.02x" in text and "within noise" in text


def test_verdict_says_faster_or_slower_beyond_the_spread():
    assert "faster (beyond" in results.verdict((130, 125, 134), (98, 96, 99))
    assert "slower (beyond" in results.verdict((60, 58, 61), (98, 96, 99))
    lower = results.verdict((10, 9, 11), (20, 19, 21), unit="ms", higher_is_better=False, words=("faster", "slower"))
    assert "faster (beyond" in lower


def test_verdict_names_where_its_ranges_come_from():
    text = results.verdict((0.51, 0.45, 0.58), (0.54, 0.48, 0.60), unit="of guesses", spread="the ±2 SE")
    assert "within noise (the ±2 SE ranges overlap)" in text and "runs'" not in text


def test_verdict_without_spread_says_it_cannot_rule_out_noise():
    assert "noise cannot be ruled out" in results.verdict(1.1, 1.0)


def test_rate_turns_times_into_rates_with_spread():
    r = results.rate({"median": 0.5, "min": 0.4, "max": 1.0}, work=10)
    assert r == {"median": 20.0, "min": 10.0, "max": 25.0}


def test_tensors_are_logged_as_numbers_and_objects_are_refused():
    row = results.record({"tok_s": torch.tensor(100.0)}, notebook="t")
    assert row["tok_s"] == 100.0 and json.loads(results.path().read_text())["tok_s"] == 100.0
    with pytest.raises(TypeError, match="cannot store"):
        results.record({"model": object()}, notebook="t")
    assert len(results.load()) == 1  # the refused row left no half-written line


def test_recording_keeps_rows_with_their_context_and_a_rerun_replaces_them(recorded_dir, monkeypatch):
    results.record({"label": "a", "tok_s": 1.0}, notebook="nb")
    assert not recorded_dir.exists()  # not recording by default
    monkeypatch.setenv("WORKBOOK_RECORD", "1")
    results.record({"label": "a", "tok_s": 1.0}, notebook="nb")
    results.record({"label": "b", "tok_s": 2.0}, notebook="nb")
    found = results.recorded("nb")
    ((file, rows),) = found.items()
    assert [r["label"] for r in rows] == ["a", "b"]
    assert {"device_name", "cpu", "torch", "date", "quick", "command"} <= set(rows[0])
    monkeypatch.setattr(results, "_started", set())  # a new process: its first row replaces the file
    results.record({"label": "c", "tok_s": 3.0}, notebook="nb")
    assert [r["label"] for r in results.recorded("nb")[file]] == ["c"]
    text = results.recorded_markdown("nb", ["label", "tok_s:.1f"], ["setup", "tokens/s"])
    where = rows[0]["cpu"] if rows[0]["device_type"] == "cpu" else rows[0]["device_name"]
    assert "| c | 3.0 |" in text and "recorded in" in text and where in text


def test_a_row_naming_its_device_is_filed_under_it(recorded_dir, monkeypatch):
    """helpers.llamacpp times the CPU of a GPU machine: its rows go to the CPU's file, not the GPU's."""
    monkeypatch.setenv("WORKBOOK_RECORD", "1")
    results.record({"label": "x", "device_name": "Some CPU (2 threads)", "device_type": "cpu"}, notebook="nb")
    assert (recorded_dir / "nb--some-cpu-2-threads.jsonl").exists()
    ((row,),) = results.recorded("nb").values()
    assert row["device_type"] == "cpu" and row["device_name"] == "Some CPU (2 threads)"


def test_missing_recorded_run_says_how_to_make_one(recorded_dir):
    assert "has been recorded yet" in results.recorded_markdown("nothing", ["x"], device_type="cuda")
    # the message names the command that records: a notebook's execution, or a helper's own --record
    assert "helpers.execute --record notebooks/05_graphs_and_compilation.ipynb" in results.recorded_markdown(
        "05_graphs_and_compilation", ["x"], device_type="nothing"
    )
    assert "`python -m helpers.timeline --record`" in results.recorded_markdown("timeline", ["x"], device_type="x")
    # a tag named neither for a notebook nor for its module: the command that records it
    made_by = results.recorded_markdown("llamacpp_gpu", ["x"], device_type="x")
    assert "`python -m helpers.llamacpp --device cuda --record`" in made_by


def test_a_single_run_each_is_no_spread():
    assert "noise cannot be ruled out" in results.verdict((5, 5, 5), (4, 4, 4))


def test_verdict_prints_one_more_digit_when_separate_ranges_would_print_a_shared_end():
    text = results.verdict((23.9, 23.3, 24.559), (24.9, 24.579, 25.8), names=("a", "b"))
    assert "slower" in text and "(23.30-24.56)" in text and "(24.58-25.80)" in text


def test_a_commands_record_flag_names_the_command(monkeypatch):
    monkeypatch.delenv("WORKBOOK_COMMAND", raising=False)
    results.start_recording("timeline", ["--tokens", "8"])
    assert results.recording()
    assert results.run_context()["command"] == "python -m helpers.timeline --tokens 8"
    results.start_recording("ladder", [])  # a command set already (helpers.execute's) is kept
    assert results.run_context()["command"] == "python -m helpers.timeline --tokens 8"
