"""The leaderboard measures an entry once, then reads it back from the log; Pareto fronts."""

import pytest

from helpers import leaderboard, results


def test_an_entry_is_measured_once_then_read_from_the_log(monkeypatch):
    monkeypatch.setenv("WORKBOOK_QUICK", "1")
    calls = []

    def measure():
        calls.append(1)
        return {"tok_s": 100.0, "perplexity": 12.0, "MiB": 50.0}

    first = leaderboard.entry("fp32", measure, model_name="pocket", device_name="cpu X", notebook="07")
    again = leaderboard.entry("fp32", measure, model_name="pocket", device_name="cpu X", notebook="07")
    assert (first["source"], again["source"], len(calls)) == ("measured now", "log", 1)
    other = leaderboard.entry("fp32", measure, model_name="pocket", device_name="GPU Y", notebook="07")
    assert other["source"] == "measured now" and len(calls) == 2  # another device is another entry
    monkeypatch.setenv("WORKBOOK_QUICK", "0")  # full-mode figures are not taken from a quick run
    assert leaderboard.lookup("fp32", "pocket", "cpu X") is None
    leaderboard.entry("fp32", measure, model_name="pocket", device_name="cpu X", notebook="07", refresh=True)
    assert len(calls) == 3 and len(results.load(leaderboard=True)) == 3


def test_measure_must_return_the_columns():
    with pytest.raises(ValueError, match="perplexity"):
        leaderboard.entry("x", lambda: {"tok_s": 1.0, "MiB": 1.0}, model_name="m", device_name="d", notebook="07")


def test_pareto_front():
    rows = [
        {"tok_s": 100, "perplexity": 12.0, "MiB": 50},  # fastest? no; best quality: yes
        {"tok_s": 300, "perplexity": 12.1, "MiB": 15},  # fastest and smallest
        {"tok_s": 200, "perplexity": 12.5, "MiB": 40},  # beaten by the second on both
        {"tok_s": 100, "perplexity": 12.0, "MiB": 60},  # ties the first on both axes: not beaten
    ]
    assert leaderboard.pareto(rows) == [True, True, False, True]
    assert leaderboard.pareto(rows, faster="MiB", lower_is_faster=True) == [True, True, False, False]
