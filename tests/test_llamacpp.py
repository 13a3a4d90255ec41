"""helpers.llamacpp: llama-bench's output read as rows, the tool found where it is, and clear errors."""

import json

import pytest

from helpers import ladder, llamacpp, models, q8

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
    assert ratio == {"median": 0.9, "min": 0.75, "max": 1.1, "pairs": 3, "ours": ladder.Q8_LABEL}
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


def test_a_cuda_build_names_the_gpu_and_says_when_nvcc_is_missing(tmp_path, monkeypatch):
    """--device cuda: llama.cpp's CUDA backend for the GPU's compute capability, in a folder of its own; without
    nvcc the error says where to find it; a CUDA build without a capability, or a capability without CUDA, is
    refused."""
    calls = []
    monkeypatch.setattr(llamacpp, "CACHE", tmp_path)
    monkeypatch.setattr(llamacpp, "sources", lambda: tmp_path / "src")
    monkeypatch.setattr(llamacpp, "_run", lambda cmd, what, **kw: calls.append(cmd))
    monkeypatch.delenv("CUDACXX", raising=False)
    monkeypatch.setattr(llamacpp.shutil, "which", lambda tool: None if tool == "nvcc" else f"/usr/bin/{tool}")
    with pytest.raises(RuntimeError, match="nvcc.*PATH"):
        llamacpp.build("cuda", cuda_arch="90")
    monkeypatch.setattr(llamacpp.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert llamacpp.build("cuda", cuda_arch="90") == tmp_path / "build-cuda-sm90" / "bin" / "llama-bench"
    configure = calls[0]
    assert "-DGGML_CUDA=ON" in configure and "-DCMAKE_CUDA_ARCHITECTURES=90" in configure
    assert str(tmp_path / "build-cuda-sm90") in configure
    # a build for one GPU is not found for another; LLAMA_CPP_BIN is taken (bench refuses it if it has no CUDA)
    (tmp_path / "build-cuda-sm90" / "bin").mkdir(parents=True)
    (tmp_path / "build-cuda-sm90" / "bin" / "llama-bench").write_text("")
    monkeypatch.delenv("LLAMA_CPP_BIN", raising=False)
    assert llamacpp.find_bench("cuda", "90") == tmp_path / "build-cuda-sm90" / "bin" / "llama-bench"
    assert llamacpp.find_bench("cuda", "80") is None  # and PATH's llama-bench is not taken for a GPU
    monkeypatch.setenv("LLAMA_CPP_BIN", str(tmp_path))
    (tmp_path / "llama-bench").write_text("")
    assert llamacpp.find_bench("cuda", "80") == tmp_path / "llama-bench"
    for wrong in (dict(isa="cuda"), dict(isa="native", cuda_arch="90")):
        with pytest.raises(ValueError, match="compute capability"):
            llamacpp.build(**wrong)


def test_a_cpu_build_asked_to_run_on_the_gpu_is_refused(tmp_path):
    """llama-bench without a GPU backend ignores -ngl and decodes on the CPU: a GPU comparison would be wrong
    without a word, so it stops and says what to do."""
    fake = tmp_path / "llama-bench"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{BENCH_JSON}\nEOF\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="without a GPU backend.*LLAMA_CPP_BIN"):
        llamacpp.bench(fake, tmp_path / "model.gguf", threads=2, new_tokens=8, depth=4, repeats=1, gpu=True)
    (row,) = llamacpp.bench(fake, tmp_path / "model.gguf", threads=2, new_tokens=8, depth=4, repeats=1)
    assert row["gpu_info"] is None  # on the CPU


def test_the_gpu_target_is_checked_in_every_pair():
    rows = []
    for k, (ours, theirs) in enumerate([(6100.0, 2000.0), (6200.0, 1900.0)], 1):
        rows += [
            {"round": f"pair {k}", "label": ladder.triton_label("bf16"), "decode_tok_s": ours},
            {"round": f"pair {k}", "label": llamacpp.bench_label("q8_0"), "decode_tok_s": theirs},
        ]
    ratio = llamacpp.paired_ratio(rows)
    assert ratio["ours"] == ladder.triton_label("bf16") and ratio["pairs"] == 2
    assert llamacpp.gpu_target(ratio).startswith("[met]") and "3.05x-3.26x" in llamacpp.gpu_target(ratio)
    assert "the workbook's Triton decode step (bf16) decoded 3.16x" in llamacpp.paired_sentence(ratio)
    rows[0]["decode_tok_s"] = 5900.0  # 2.95x in the first pair: not at least 3x in every pair
    assert llamacpp.gpu_target(llamacpp.paired_ratio(rows)).startswith("[NOT met]")
    assert llamacpp.gpu_target(None).startswith("[not checked]")


@pytest.mark.parametrize(
    "argv, said",
    [(["--device", "cuda", "--isa", "avx2"], "--isa caps a CPU build"), (["--device", "tpu"], "invalid choice")],
)
def test_device_arguments_that_cannot_work_are_refused(argv, said, capsys):
    with pytest.raises(SystemExit):
        llamacpp.main(argv)
    assert said in capsys.readouterr().err


def test_cuda_without_a_gpu_says_so(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        llamacpp.main(["--device", "cuda"])
    assert "torch sees no CUDA GPU here" in capsys.readouterr().err


@pytest.mark.skipif(not q8.available()[0], reason="the q8_0 kernel cannot build here")
def test_without_the_ladder_the_run_is_llama_cpps_rows_and_the_pairs(
    tiny_model, tokenizer, tmp_path, monkeypatch, capsys
):
    """--no-ladder: llama.cpp's rows (f16, q8_0) and the pairs, and no ratio to a first row that was not run."""
    fake = tmp_path / "llama-bench"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{BENCH_JSON}\nEOF\n")
    fake.chmod(0o755)
    monkeypatch.setattr(llamacpp, "find_bench", lambda isa: fake)
    monkeypatch.setattr(llamacpp, "convert", lambda model, tok, folder, kind: folder / f"model-{kind}.gguf")
    monkeypatch.setattr(models, "load", lambda *a, **kw: (tiny_model, tokenizer))
    argv = ["--no-ladder", "--pairs", "1", "--repeats", "1", "--new-tokens", "3", "--prompt-len", "4"]
    assert llamacpp.main(argv) == 0
    out = capsys.readouterr().out
    assert "before" not in out and "after" not in out and out.count("llama.cpp f16") == 1
    assert "pair 1" in out and "in 1 pairs" in out


def _stand_in(tmp_path, **fields):
    """A llama-bench that writes its arguments to args.txt and prints BENCH_JSON's row with ``fields``."""
    row = {**json.loads(BENCH_JSON)[0], **fields}
    fake = tmp_path / "llama-bench"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args.txt'}\ncat <<'EOF'\n{json.dumps([row])}\nEOF\n")
    fake.chmod(0o755)
    return fake


def test_layers_go_where_asked_and_a_run_elsewhere_is_refused(tmp_path):
    """-ngl 99 on a GPU, -ngl 0 on a CPU (a CUDA build's default puts every layer on the GPU); a GPU run is kept
    with the GPU's name, and a CPU run whose layers went to a GPU is refused."""
    timing = dict(threads=2, new_tokens=8, depth=4, repeats=1)
    on_gpu = _stand_in(tmp_path, gpu_info="NVIDIA H100 80GB HBM3", n_gpu_layers=99)
    (row,) = llamacpp.bench(on_gpu, tmp_path / "model.gguf", **timing, gpu=True)
    assert "-ngl 99" in (tmp_path / "args.txt").read_text() and row["gpu_info"] == "NVIDIA H100 80GB HBM3"
    with pytest.raises(RuntimeError, match="-ngl 0 asked for none"):
        llamacpp.bench(on_gpu, tmp_path / "model.gguf", **timing)
    assert "-ngl 0" in (tmp_path / "args.txt").read_text()
    on_cpu = _stand_in(tmp_path, gpu_info="", n_gpu_layers=0)
    (row,) = llamacpp.bench(on_cpu, tmp_path / "model.gguf", **timing)
    assert row["gpu_info"] is None


def test_a_gpu_where_the_triton_step_was_not_checked_is_refused(monkeypatch, capsys):
    """The pairs run the Triton step, checked on 9.x GPUs only: an A100 (8.0) is told why before anything builds."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORKBOOK_FAKE_CAPABILITY", "8.0")
    with pytest.raises(SystemExit):
        llamacpp.main(["--device", "cuda"])
    assert "checked on 9.x GPUs only" in capsys.readouterr().err
