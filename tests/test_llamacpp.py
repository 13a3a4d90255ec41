"""helpers.llamacpp: llama-bench's output read as rows, the tool found where it is, and clear errors."""

import json

import pytest

from helpers import ladder, llamacpp, q8

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


def test_an_avx2_build_is_capped_and_kept_apart(tmp_path, monkeypatch):
    """--isa avx2: llama.cpp built without native flags and without AVX-512, in a folder of its own, never taken
    from PATH or LLAMA_CPP_BIN (those are builds for the whole CPU); the workbook's kernel capped the same way."""
    calls = []
    monkeypatch.setattr(llamacpp, "CACHE", tmp_path)
    monkeypatch.setattr(llamacpp, "sources", lambda: tmp_path / "src")
    monkeypatch.setattr(llamacpp.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(llamacpp, "_run", lambda cmd, what, **kw: calls.append(cmd))
    monkeypatch.setenv("LLAMA_CPP_BIN", str(tmp_path))
    (tmp_path / "llama-bench").write_text("")
    assert llamacpp.find_bench("avx2") is None  # LLAMA_CPP_BIN's build is not an AVX2 one
    assert llamacpp.build("avx2") == tmp_path / "build-avx2" / "bin" / "llama-bench"
    configure = calls[0]
    assert "-DGGML_NATIVE=OFF" in configure and "-DGGML_AVX512=OFF" in configure and "-DGGML_AVX2=ON" in configure
    assert str(tmp_path / "build-avx2") in configure
    with pytest.raises(ValueError, match="isa takes"):
        llamacpp.build("avx9")
    monkeypatch.setenv("WORKBOOK_Q8_ISA", "avx2")
    assert q8.isa_cap() == q8.VARIANTS["avx2"] and all(f in q8._flags()[0] for f in q8.VARIANTS["avx2"])
    monkeypatch.setenv("WORKBOOK_Q8_ISA", "avx9")
    with pytest.raises(ValueError, match="WORKBOOK_Q8_ISA"):
        q8.isa_cap()
    assert llamacpp.AVX2_ENV["ATEN_CPU_CAPABILITY"] == "avx2" and llamacpp.AVX2_ENV["WORKBOOK_Q8_ISA"] == "avx2"


def _pair(k, ours, theirs):
    return [
        {"round": f"pair {k}", "label": ladder.Q8_LABEL, "decode_tok_s": ours},
        {"round": f"pair {k}", "label": llamacpp.bench_label("q8_0"), "decode_tok_s": theirs},
    ]


def test_pairs_are_compared_within_each_pair():
    rows = [{"round": "before", "label": ladder.Q8_LABEL, "decode_tok_s": 500.0}]  # not a pair: left out
    rows += _pair(1, 110.0, 100.0) + _pair(2, 150.0, 200.0) + _pair(3, 90.0, 100.0)
    ratio = llamacpp.paired_ratio(rows)
    assert ratio == {"median": 0.9, "min": 0.75, "max": 1.1, "pairs": 3}
    assert "no consistent difference" in llamacpp.paired_sentence(ratio)
    assert "faster in every pair" in llamacpp.paired_sentence(llamacpp.paired_ratio(_pair(1, 120.0, 100.0)))
    assert "slower in every pair" in llamacpp.paired_sentence(llamacpp.paired_ratio(_pair(1, 80.0, 100.0)))
    assert llamacpp.paired_ratio(rows[:1]) is None  # a run recorded before pairs existed


def test_negative_pairs_are_refused(capsys):
    with pytest.raises(SystemExit):
        llamacpp.main(["--pairs", "-1"])
    assert "--pairs takes 0" in capsys.readouterr().err


@pytest.mark.skipif(not q8.available()[0], reason="the q8_0 kernel cannot build here")
def test_pairs_alternate_which_program_goes_first(tiny_model, tokenizer, tmp_path):
    fake = tmp_path / "llama-bench"  # stands in for llama.cpp's benchmark: prints its JSON
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{BENCH_JSON}\nEOF\n")
    fake.chmod(0o755)
    timing = dict(prompt_len=4, new_tokens=3, repeats=1)
    rows = llamacpp.paired(tiny_model, tokenizer, "tiny", fake, tmp_path / "m.gguf", 1, 2, **timing)
    assert [(r["round"], r["label"], r["first"]) for r in rows] == [
        ("pair 1", ladder.Q8_LABEL, "ours"),
        ("pair 1", llamacpp.bench_label("q8_0"), "ours"),
        ("pair 2", llamacpp.bench_label("q8_0"), "theirs"),
        ("pair 2", ladder.Q8_LABEL, "theirs"),
    ]
    assert llamacpp.paired_ratio(rows)["pairs"] == 2


def test_a_crashing_llama_bench_says_so_and_what_to_try(tmp_path):
    """A native build of llama-bench crashed (SIGSEGV, no message) on an Intel Xeon with AMX where the AVX2 build
    ran: the error names the signal and suggests --isa avx2, instead of an empty message."""
    fake = tmp_path / "llama-bench"
    fake.write_text("#!/bin/sh\nkill -SEGV $$\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"crashed .*signal 11, SIGSEGV.*--isa avx2"):
        llamacpp.bench(fake, tmp_path / "model.gguf", threads=2, new_tokens=8, depth=4, repeats=1)
