"""llama.cpp beside the workbook on a CPU: find or build its benchmark, convert a workbook model, time both.

    python -m helpers.llamacpp --record            # GPT-2 124M architecture, random weights, this CPU's threads

1. **llama.cpp**: ``llama-bench`` on ``PATH`` or in ``$LLAMA_CPP_BIN``; otherwise it is built from the llama.cpp
   sources that the ``llama-cpp-python`` source package carries (pip downloads it; cmake and a C++ compiler
   build the one tool, with ``GGML_NATIVE`` so that it uses this CPU's instruction sets: minutes on 2 cores).
2. **The model**: saved with safetensors, converted with llama.cpp's own converter (``convert_hf_to_gguf.py``
   and its ``gguf-py``) to f16 and to q8_0 (blocks of 32 int8 values with one scale each). The workbook's
   random-weight model carries the pocket tokenizer, which the converter does not know; ``llama-bench``
   never tokenizes text, so the converter is told to write it as GPT-2's.
3. **Timing**, one after another on the same machine and thread count: the workbook's CPU ladder
   (``helpers.ladder``), then ``llama-bench`` decoding (``-p 0 -n N -d P``: N tokens after a P-token context,
   as the ladder's prompt), then the ladder again, so that drift shows. ``--record`` keeps the rows, with the
   CPU's instruction sets, in ``results/recorded/llamacpp--<machine>.jsonl``.
4. **Pairs** (``--pairs``): the workbook's fastest CPU path (the q8_0 decode step in C++) and llama.cpp q8_0 in
   turn, several times, alternating which goes first. A shared machine's speed drifts over minutes (other
   tenants, clocks); the two runs of a pair are seconds apart, so the ratio within each pair
   (``paired_ratio``) is the fair comparison, and alternating the order keeps a steady trend from favouring one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("WORKBOOK_CACHE", Path.home() / ".cache" / "faster-gpt2")) / "llama.cpp"
SDIST = "llama-cpp-python"  # the source package that carries llama.cpp's sources (vendor/llama.cpp)


# llama.cpp's build options for a build capped at AVX2 (``--isa avx2``): the instruction sets of a CPU without
# AVX-512 (AMD's Zen 3, many laptops), on a CPU that has more
ISA_FLAGS = {
    "native": ["-DGGML_NATIVE=ON"],
    "avx2": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"]
    + ["-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF"],
}
# what caps PyTorch's own CPU kernels at AVX2 (read when torch is imported): ATen's, MKL's and oneDNN's; the
# workbook's q8_0 kernel reads WORKBOOK_Q8_ISA (helpers.q8.isa_cap)
AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "WORKBOOK_Q8_ISA": "avx2",
}


def _build_dir(isa: str) -> Path:
    return CACHE / ("build" if isa == "native" else f"build-{isa}")


def find_bench(isa: str = "native") -> Path | None:
    """``llama-bench`` from ``$LLAMA_CPP_BIN``, ``PATH`` or an earlier build in the cache, or None; for a capped
    ``isa`` only the cache's build of it."""
    if isa != "native":
        found = _build_dir(isa) / "bin" / "llama-bench"
        return found if found.exists() else None
    for folder in (os.environ.get("LLAMA_CPP_BIN"), _build_dir("native") / "bin"):
        if folder and (Path(folder) / "llama-bench").exists():
            return Path(folder) / "llama-bench"
    found = shutil.which("llama-bench")
    return Path(found) if found else None


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if not done.returncode:
        return done
    command, output = " ".join(map(str, cmd[:3])), (done.stderr or done.stdout)[-1500:]
    if done.returncode < 0:  # killed by a signal: a crash prints nothing of its own
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else "?"
        raise RuntimeError(
            f"{what} crashed ({command} ...: signal {-done.returncode}, {name}). A build for this CPU's newest "
            f"instructions can crash where an older set runs: try again with --isa avx2 (both programs built for "
            f"AVX2 only).\n{output}"
        )
    raise RuntimeError(f"{what} failed ({command} ...):\n{output}")


def sources() -> Path:
    """llama.cpp's source folder, from the ``llama-cpp-python`` source package (downloaded once, then cached)."""
    found = sorted(CACHE.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if found:
        return found[-1]
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-q", "-d", tmp, SDIST], "pip")
        archive = next(Path(tmp).glob("*.tar.gz"))
        shutil.unpack_archive(archive, CACHE)
    return sorted(CACHE.glob("llama_cpp_python-*/vendor/llama.cpp"))[-1]


def build(isa: str = "native") -> Path:
    """Build ``llama-bench`` for this CPU, or capped at ``isa`` (a key of ``ISA_FLAGS``; cmake and a C++ compiler
    needed); return its path."""
    if isa not in ISA_FLAGS:
        raise ValueError(f"isa takes one of {', '.join(ISA_FLAGS)}, got {isa!r}.")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"Building llama.cpp needs {tool}, which this machine lacks. Install cmake and a C++ compiler, or "
                "point LLAMA_CPP_BIN at a folder with a llama-bench you built."
            )
    src, out = sources(), _build_dir(isa)
    flags = ["-DCMAKE_BUILD_TYPE=Release", *ISA_FLAGS[isa], "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF"]
    flags += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"]  # llama-bench only
    _run(["cmake", "-S", str(src), "-B", str(out), *flags], "cmake configure")
    _run(["cmake", "--build", str(out), "--target", "llama-bench", f"-j{os.cpu_count() or 2}"], "cmake build")
    return out / "bin" / "llama-bench"


_CONVERT = """
import sys
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"  # llama-bench never tokenizes: any BPE name does
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[1:]]
convert_hf_to_gguf.main()
"""


def convert(model, tok, folder: Path, outtype: str) -> Path:
    """``model`` as a GGUF file of ``outtype`` (f16, q8_0), with llama.cpp's own converter."""
    hf = folder / "hf"
    if not hf.exists():
        model.save_pretrained(hf, safe_serialization=True)
        tok.save_pretrained(hf)
        config = json.loads((hf / "config.json").read_text())  # the converter reads GPT-2's older name of the
        config.setdefault("n_ctx", config["n_positions"])  # context length, which transformers 5 no longer writes
        (hf / "config.json").write_text(json.dumps(config, indent=1))
    src, out = sources(), folder / f"model-{outtype}.gguf"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), str(src / "gguf-py"), os.environ.get("PYTHONPATH", "")]),
    }
    _run([sys.executable, "-c", _CONVERT, str(hf), "--outtype", outtype, "--outfile", str(out)], "convert", env=env)
    return out


def parse_bench(text: str) -> list[dict]:
    """``llama-bench -o json`` output as rows: decode tokens/s, median and range over its repetitions."""
    rows = []
    for r in json.loads(text):
        samples = r.get("samples_ts") or [r["avg_ts"]]
        rows.append(
            {
                "label": f"llama.cpp {r.get('type_k', '')} {r.get('model_type', '')}".strip(),
                "model_type": r.get("model_type"),
                "threads": r.get("n_threads"),
                "new_tokens": r.get("n_gen"),
                "depth": r.get("n_depth", 0),
                "decode_tok_s": statistics.median(samples),
                "decode_tok_s_min": min(samples),
                "decode_tok_s_max": max(samples),
                "build": r.get("build_commit"),
                "cpu_info": r.get("cpu_info"),
            }
        )
    return rows


def bench(bench_path: Path, gguf: Path, threads: int, new_tokens: int, depth: int, repeats: int) -> list[dict]:
    cmd = [str(bench_path), "-m", str(gguf), "-p", "0", "-n", str(new_tokens), "-d", str(depth)]
    cmd += ["-t", str(threads), "-r", str(repeats), "-o", "json"]
    return parse_bench(_run(cmd, "llama-bench").stdout)


def bench_label(kind: str) -> str:
    """The label of llama.cpp's rows for a GGUF of ``kind`` ("f16", "q8_0")."""
    return f"llama.cpp {kind}, llama-bench"


def paired(
    model,
    tok,
    model_name: str,
    bench_path: Path,
    gguf: Path,
    threads: int,
    pairs: int,
    *,
    prompt_len: int,
    new_tokens: int,
    repeats: int,
) -> list[dict]:
    """``pairs`` rounds of the workbook's q8_0 path on ``model`` (a CPU GPT-2 named ``model_name``, with its
    tokenizer ``tok``) and llama.cpp q8_0 on ``gguf`` (the same model converted), the kernel first in odd rounds
    and llama.cpp first in even ones; rows with ``round`` "pair 1", "pair 2", ... and ``first`` (which ran first),
    none where the kernel cannot be built."""
    from . import bench as workbook_bench
    from . import fastgen, q8
    from .ladder import Q8_LABEL

    ok, why = q8.available()
    if not ok:
        print(f"no pairs: {why}")
        return []
    fast = fastgen.FastGPT2(model, int8="q8_0", kernels=True)  # the row Q8_LABEL names: the C++ step
    rows = []

    def ours() -> list[dict]:
        rec = workbook_bench.generation(
            model,
            tok,
            prompt_len=prompt_len,
            new_tokens=new_tokens,
            warmup=2,
            repeats=repeats,
            generate_fn=fast.generate_fn(),
            label=Q8_LABEL,
            model_name=model_name,
            model_bytes=fast.weight_bytes(),
        )
        return [rec]

    def theirs() -> list[dict]:
        return [
            {**r, "label": bench_label("q8_0")}
            for r in bench(bench_path, gguf, threads, new_tokens, prompt_len, repeats)
        ]

    for k in range(1, pairs + 1):
        order = (ours, theirs) if k % 2 else (theirs, ours)
        for run in order:
            rows += [{**r, "round": f"pair {k}", "first": order[0].__name__} for r in run()]
    return rows


def paired_ratio(rows: list[dict]) -> dict | None:
    """The workbook's q8_0 path's decode speed over llama.cpp q8_0's within each pair of ``rows``: median, lowest
    and highest ratio and the number of pairs; None when the rows hold no pair (runs recorded before pairs)."""
    from .ladder import Q8_LABEL

    ratios = []
    for rnd in dict.fromkeys(r["round"] for r in rows if str(r.get("round", "")).startswith("pair ")):
        ours = [r for r in rows if r["round"] == rnd and r["label"] == Q8_LABEL]
        theirs = [r for r in rows if r["round"] == rnd and r["label"] == bench_label("q8_0")]
        if ours and theirs:
            ratios.append(ours[0]["decode_tok_s"] / theirs[0]["decode_tok_s"])
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "pairs": len(ratios)}


def paired_sentence(ratio: dict) -> str:
    """One sentence on ``paired_ratio``'s result: the ratios' median and range, and what they say."""
    if ratio["min"] > 1:
        what = "faster in every pair"
    elif ratio["max"] < 1:
        what = "slower in every pair"
    else:
        what = "no consistent difference (faster in some pairs, slower in others)"
    return (
        f"in {ratio['pairs']} pairs, the workbook's q8_0 decode step decoded {ratio['median']:.2f}x as fast as "
        f"llama.cpp q8_0 (median; {ratio['min']:.2f}x-{ratio['max']:.2f}x): {what}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-124m-random", help="a model name of helpers.models")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=3, help="rounds of the q8_0 decode step and llama.cpp q8_0")
    parser.add_argument("--record", action="store_true", help="keep the rows in results/recorded/ (committed)")
    parser.add_argument(
        "--isa",
        choices=list(ISA_FLAGS),
        default="native",
        help="avx2: both programs built for AVX2 only (PyTorch's kernels capped too where they allow it): a CPU "
        "without AVX-512, timed on one that has it",
    )
    args = parser.parse_args(argv)
    if args.pairs < 0:
        parser.error(f"--pairs takes 0 (none) or more rounds, got {args.pairs}")
    if args.isa == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        # the caps are read when torch loads: start again with them set (torch may be imported already)
        cmd = [sys.executable, "-m", "helpers.llamacpp", *(argv if argv is not None else sys.argv[1:])]
        os.execve(sys.executable, cmd, {**os.environ, **AVX2_ENV})
    from .notebook import quiet

    quiet()  # importing transformers imports torchao, which logs about GPU kernels a CPU lacks
    import torch

    from . import device, ladder, models, results

    if args.record:
        results.start_recording("llamacpp", argv)
    threads = torch.get_num_threads()
    print(f"{device.cpu_summary()}; {threads} threads for both")
    bench_path = find_bench(args.isa) or build(args.isa)
    model, tok = models.load(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        ggufs = {t: convert(model, tok, Path(tmp), t) for t in ("f16", "q8_0")}
        lengths = dict(prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats)
        timing = dict(lengths, device="cpu")
        rows = [{**r, "round": "before"} for r in ladder.run(args.model, **timing)]
        for kind, path in ggufs.items():
            for r in bench(bench_path, path, threads, args.new_tokens, args.prompt_len, args.repeats):
                rows.append({**r, "label": bench_label(kind), "round": "llama.cpp"})
        rows += [{**r, "round": "after"} for r in ladder.run(args.model, **timing)]
        rows += paired(model, tok, args.model, bench_path, ggufs["q8_0"], threads, args.pairs, **lengths)
    first = next(r for r in rows if r["label"] == "generate(), fp32 eager")["decode_tok_s"]
    for r in rows:
        r["vs_fp32_eager"] = r["decode_tok_s"] / first
        print(f"{r['round']:>9} | {r['label']:<50} | {r['decode_tok_s']:8.1f} tokens/s | {r['vs_fp32_eager']:.2f}x")
        keep = {k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) or v is None}
        where = {"device_name": device.name(torch.device("cpu")), "device_type": "cpu"}  # a CPU, also on a GPU host
        if args.isa != "native":  # a file of its own, and a CPU line that says what was capped
            where["device_name"] += f", {args.isa.upper()} builds"
            where["cpu"] = (
                f"{device.cpu_summary()}; both programs built for {args.isa.upper()} only (PyTorch's ATen, MKL and "
                "oneDNN kernels capped too; FBGEMM's dynamic int8 chooses its own)"
            )
        results.record(
            {**keep, "model": args.model, "threads": threads, **where}, notebook="llamacpp", technique=r["label"]
        )
    ratio = paired_ratio(rows)
    if ratio:
        print(paired_sentence(ratio))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
