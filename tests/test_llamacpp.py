"""helpers.llamacpp: llama-bench's output read as rows, the tool found where it is, and clear errors."""

import json

import pytest

from helpers import llamacpp

BENCH_JSON = json.dumps(
    [
        {
            "model_type": "gpt2 ?B Q8_0",
            "n_threads": 2,
            "n_gen": 128,
            "n_depth": 32,
            "avg_ts": 101.0,
            "samples_ts": [99.0, 101.0, 104.0],
            "build_commit": "abc",
            "cpu_info": "AMD EPYC",
        }
    ]
)


def test_llama_bench_json_becomes_rows_with_median_and_range():
    (row,) = llamacpp.parse_bench(BENCH_JSON)
    assert row["decode_tok_s"] == 101.0 and row["decode_tok_s_min"] == 99.0 and row["decode_tok_s_max"] == 104.0
    assert row["threads"] == 2 and row["new_tokens"] == 128 and row["depth"] == 32


def test_llama_bench_is_found_in_llama_cpp_bin(tmp_path, monkeypatch):
    (tmp_path / "llama-bench").write_text("")
    monkeypatch.setenv("LLAMA_CPP_BIN", str(tmp_path))
    assert llamacpp.find_bench() == tmp_path / "llama-bench"


def test_building_without_cmake_says_what_to_do(monkeypatch):
    monkeypatch.setattr(llamacpp.shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match="LLAMA_CPP_BIN"):
        llamacpp.build()
