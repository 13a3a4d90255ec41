"""llama.cpp beside the workbook on a CPU (or a GPU): find or build its benchmark, convert a workbook model, time both.

    python -m helpers.llamacpp --record            # GPT-2 124M architecture, random weights, this CPU's threads
    python -m helpers.llamacpp --device cuda --record   # a GPU: llama.cpp's CUDA build beside the Triton step

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
5. **On a GPU** (``--device cuda``): llama.cpp built with its CUDA backend for this GPU's compute capability
   (CUDA's compiler ``nvcc`` needed; minutes on many cores), every layer on the GPU (``-ngl 99``), between two
   runs of the GPU ladder; the pairs are the workbook's hand-written Triton decode step (bf16) and llama.cpp's
   CUDA q8_0. Its records are kept apart from the CPUs' (``results/recorded/llamacpp_gpu--<GPU>.jsonl``). The
   target (``GPU_TARGET``): llama.cpp's q8_0 at least 3x slower than the Triton step in every pair.
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


GPU_TARGET = 3.0  # the workbook's Triton step at least this many times llama.cpp's CUDA q8_0 (issue #21)
GPU_TAG = "llamacpp_gpu"  # a GPU run's records: results/recorded/llamacpp_gpu--<GPU>.jsonl, apart from the CPUs'


def _build_dir(isa: str, cuda_arch: str | None = None) -> Path:
    """The cache's build folder: one per CPU cap, and one per GPU compute capability (a build for 9.0 does not
    run on an 8.0 GPU)."""
    if isa == "cuda":
        return CACHE / f"build-cuda-sm{cuda_arch}"
    return CACHE / ("build" if isa == "native" else f"build-{isa}")


def find_bench(isa: str = "native", cuda_arch: str | None = None) -> Path | None:
    """``llama-bench`` from ``$LLAMA_CPP_BIN``, ``PATH`` or an earlier build in the cache, or None; for a capped
    ``isa`` only the cache's build of it; for ``isa`` "cuda" ``$LLAMA_CPP_BIN`` or the cache's build for compute
    capability ``cuda_arch`` (a build without CUDA is refused when it runs: ``bench``)."""
    if isa == "cuda":
        folders = (os.environ.get("LLAMA_CPP_BIN"), _build_dir(isa, cuda_arch) / "bin")
    elif isa != "native":
        folders = (_build_dir(isa) / "bin",)
    else:
        folders = (os.environ.get("LLAMA_CPP_BIN"), _build_dir("native") / "bin")
    for folder in folders:
        if folder and (Path(folder) / "llama-bench").exists():
            return Path(folder) / "llama-bench"
    found = shutil.which("llama-bench") if isa == "native" else None
    return Path(found) if found else None


CPU_CRASH = (
    "A build for this CPU's newest instructions can crash where an older set runs: try again with --isa avx2 (both "
    "programs built for AVX2 only)."
)
GPU_CRASH = (
    "llama.cpp's CUDA backend aborts on a CUDA error (its message is below): a build for another GPU, or a driver "
    "older than the CUDA compiler; delete the build folder named above and run again to rebuild for this GPU."
)


def _run(cmd: list[str], what: str, crash_hint: str = CPU_CRASH, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd`` (``what`` names it in errors); a crash (killed by a signal) says ``crash_hint``."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if not done.returncode:
        return done
    command, output = " ".join(map(str, cmd[:3])), (done.stderr or done.stdout)[-1500:]
    if done.returncode < 0:  # killed by a signal: a crash prints nothing of its own
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else "?"
        raise RuntimeError(f"{what} crashed ({command} ...: signal {-done.returncode}, {name}). {crash_hint}\n{output}")
    raise RuntimeError(f"{what} failed ({command} ...):\n{output}")


def sources() -> Path:
    """llama.cpp's source folder, from the ``llama-cpp-python`` source package (downloaded once, then cached)."""
    found = sorted(CACHE.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if found:
        return found[-1]
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-q", "-d", tmp, SDIST],
                "pip",
            )
        except RuntimeError as err:
            raise RuntimeError(
                f"Could not download llama.cpp's sources (pip download {SDIST}). Without internet, copy the "
                f"unpacked source package (a folder llama_cpp_python-<version>) into {CACHE}, or point "
                f"LLAMA_CPP_BIN at a folder with a llama-bench you built.\n{err}"
            ) from None
        archive = next(Path(tmp).glob("*.tar.gz"))
        shutil.unpack_archive(archive, CACHE)
    return sorted(CACHE.glob("llama_cpp_python-*/vendor/llama.cpp"))[-1]


def build(isa: str = "native", cuda_arch: str | None = None) -> Path:
    """Build ``llama-bench`` for this CPU, or capped at ``isa`` (a key of ``ISA_FLAGS``), or (``isa`` "cuda")
    with llama.cpp's CUDA backend for compute capability ``cuda_arch`` (``"90"`` for an H100); cmake and a C++
    compiler needed, and CUDA's compiler nvcc for a GPU; return its path."""
    if isa not in (*ISA_FLAGS, "cuda"):
        raise ValueError(f"isa takes one of {', '.join([*ISA_FLAGS, 'cuda'])}, got {isa!r}.")
    if (isa == "cuda") != (cuda_arch is not None):
        raise ValueError("A CUDA build takes isa='cuda' and the GPU's compute capability as cuda_arch, e.g. '90'.")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"Building llama.cpp needs {tool}, which this machine lacks. Install cmake and a C++ compiler, or "
                "point LLAMA_CPP_BIN at a folder with a llama-bench you built."
            )
    if isa == "cuda" and not (os.environ.get("CUDACXX") or shutil.which("nvcc")):  # the CUDA compiler
        raise RuntimeError(
            "Building llama.cpp for a GPU needs CUDA's compiler nvcc, which is not on PATH. Add the CUDA toolkit's "
            "bin folder to PATH (on Colab: export PATH=/usr/local/cuda/bin:$PATH) or set CUDACXX to nvcc's path."
        )
    src, out = sources(), _build_dir(isa, cuda_arch)
    cuda = ["-DGGML_NATIVE=ON", "-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}"]
    flags = ["-DCMAKE_BUILD_TYPE=Release", *(cuda if isa == "cuda" else ISA_FLAGS[isa]), "-DLLAMA_CURL=OFF"]
    flags += ["-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    flags += ["-DLLAMA_BUILD_SERVER=OFF"]  # llama-bench only
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
                "gpu_info": (r.get("gpu_info") or None) if r.get("n_gpu_layers") else None,  # where its layers ran
            }
        )
    return rows


def bench(
    bench_path: Path, gguf: Path, threads: int, new_tokens: int, depth: int, repeats: int, gpu: bool = False
) -> list[dict]:
    """``llama-bench`` decoding ``new_tokens`` after ``depth`` tokens, ``repeats`` times, as rows: every layer on
    the GPU with ``gpu`` (``-ngl 99``), none without (``-ngl 0``: a CUDA build would otherwise put them there);
    refused when the layers ran elsewhere than asked."""
    cmd = [str(bench_path), "-m", str(gguf), "-p", "0", "-n", str(new_tokens), "-d", str(depth)]
    cmd += ["-t", str(threads), "-r", str(repeats), "-o", "json", "-ngl", "99" if gpu else "0"]
    rows = parse_bench(_run(cmd, "llama-bench", crash_hint=GPU_CRASH if gpu else CPU_CRASH).stdout)
    if gpu and not all(r["gpu_info"] for r in rows):
        raise RuntimeError(
            f"{bench_path} was built without a GPU backend, so it decoded on the CPU. If LLAMA_CPP_BIN names its "
            "folder, unset it, so that --device cuda builds llama.cpp with CUDA for this GPU."
        )
    if not gpu and any(r["gpu_info"] for r in rows):
        raise RuntimeError(f"{bench_path} put layers on a GPU although -ngl 0 asked for none; time it on a CPU build.")
    return rows


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
    gpu: bool = False,
) -> list[dict]:
    """``pairs`` rounds of the workbook's fastest path on ``model`` (named ``model_name``, with its tokenizer
    ``tok``) and llama.cpp q8_0 on ``gguf`` (the same model converted), the workbook first in odd rounds and
    llama.cpp first in even ones; rows with ``round`` "pair 1", "pair 2", ... and ``first`` (which ran first).
    The workbook's path: on a CPU the q8_0 decode step in C++ (none where it cannot be built: no rows), with
    ``gpu`` (``model`` in half precision on a GPU) the hand-written Triton step, as the ladder's row of it runs."""
    from . import bench as workbook_bench
    from . import fastgen, q8
    from .ladder import GRAPH_STEPS, Q8_LABEL, short_dtype, triton_label

    if gpu:
        fast = fastgen.FastGPT2(model, graph_steps=GRAPH_STEPS, kernels=True)
        label = triton_label(short_dtype(model.dtype))
    else:
        ok, why = q8.available()
        if not ok:
            print(f"no pairs: {why}")
            return []
        fast, label = fastgen.FastGPT2(model, int8="q8_0", kernels=True), Q8_LABEL  # the C++ step
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
            label=label,
            model_name=model_name,
            model_bytes=fast.weight_bytes(),
        )
        return [rec]

    def theirs() -> list[dict]:
        return [
            {**r, "label": bench_label("q8_0")}
            for r in bench(bench_path, gguf, threads, new_tokens, prompt_len, repeats, gpu=gpu)
        ]

    for k in range(1, pairs + 1):
        order = (ours, theirs) if k % 2 else (theirs, ours)
        for run in order:
            rows += [{**r, "round": f"pair {k}", "first": order[0].__name__} for r in run()]
    return rows


def paired_ratio(rows: list[dict]) -> dict | None:
    """The workbook's decode speed over llama.cpp q8_0's within each pair of ``rows``: median, lowest and highest
    ratio, the number of pairs and the workbook row's label (``ours``); None when the rows hold no pair (runs
    recorded before pairs)."""
    ratios, ours_label = [], None
    for rnd in dict.fromkeys(r["round"] for r in rows if str(r.get("round", "")).startswith("pair ")):
        ours = [r for r in rows if r["round"] == rnd and r["label"] != bench_label("q8_0")]
        theirs = [r for r in rows if r["round"] == rnd and r["label"] == bench_label("q8_0")]
        if ours and theirs:
            ratios.append(ours[0]["decode_tok_s"] / theirs[0]["decode_tok_s"])
            ours_label = ours[0]["label"]
    if not ratios:
        return None
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "pairs": len(ratios),
        "ours": ours_label,
    }


def _short(label: str) -> str:
    """The workbook's row in a sentence: its decode step, not the ladder's whole label."""
    from .ladder import Q8_LABEL

    if label == Q8_LABEL:
        return "the workbook's q8_0 decode step"
    if "Triton kernels" in label:
        return "the workbook's Triton decode step (bf16)"
    return f"the workbook's row '{label}'"


def paired_sentence(ratio: dict) -> str:
    """One sentence on ``paired_ratio``'s result: the ratios' median and range, and what they say."""
    if ratio["min"] > 1:
        what = "faster in every pair"
    elif ratio["max"] < 1:
        what = "slower in every pair"
    else:
        what = "no consistent difference (faster in some pairs, slower in others)"
    return (
        f"in {ratio['pairs']} pairs, {_short(ratio['ours'])} decoded {ratio['median']:.2f}x as fast as "
        f"llama.cpp q8_0 (median; {ratio['min']:.2f}x-{ratio['max']:.2f}x): {what}"
    )


def gpu_target(ratio: dict | None) -> str:
    """Issue #21's target on a GPU, checked against ``paired_ratio``'s result: llama.cpp's CUDA q8_0 at least
    ``GPU_TARGET`` times slower than the workbook's Triton step in every pair."""
    if ratio is None:
        return f"[not checked] llama.cpp's CUDA q8_0 >= {GPU_TARGET:g}x slower in every pair: no pairs in this run"
    ok = ratio["min"] >= GPU_TARGET
    return (
        f"[{'met' if ok else 'NOT met'}] llama.cpp's CUDA q8_0 >= {GPU_TARGET:g}x slower than "
        f"{_short(ratio['ours'])} in every pair: {ratio['min']:.2f}x-{ratio['max']:.2f}x over {ratio['pairs']} pairs"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-124m-random", help="a model name of helpers.models")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=3, help="rounds of the workbook's step and llama.cpp q8_0")
    parser.add_argument("--record", action="store_true", help="keep the rows in results/recorded/ (committed)")
    parser.add_argument(
        "--no-ladder",
        action="store_true",
        help="leave out the two runs of the ladder around llama.cpp's rows (minutes on a GPU, where the compiled "
        "rows compile): llama.cpp's rows and the pairs only",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: llama.cpp built with CUDA, every layer on the GPU, beside the GPU ladder and the Triton step",
    )
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
    if args.device == "cuda" and args.isa != "native":
        parser.error("--isa caps a CPU build; with --device cuda llama.cpp is built for this GPU and this CPU")
    if args.isa == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        # the caps are read when torch loads: start again with them set (torch may be imported already)
        cmd = [sys.executable, "-m", "helpers.llamacpp", *(argv if argv is not None else sys.argv[1:])]
        os.execve(sys.executable, cmd, {**os.environ, **AVX2_ENV})
    from .notebook import quiet

    quiet()  # importing transformers imports torchao, which logs about GPU kernels a CPU lacks
    import torch

    from . import capability, device, ladder, models, results

    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU here; run it on a GPU machine, or leave --device out")
    cc = capability.capability(torch.device("cuda")) if gpu else None  # (major, minor)
    if gpu and not (step := capability.triton_step(cc)):
        parser.error(
            f"--device cuda pairs llama.cpp with the workbook's Triton step, which runs here only where it "
            f"was checked: {step.why}"
        )
    if args.record:
        results.start_recording("llamacpp", argv)
    threads = torch.get_num_threads()
    if gpu:
        print(f"{torch.cuda.get_device_name()} (compute capability {cc[0]}.{cc[1]}); host CPU {device.cpu_summary()}")
        arch = f"{cc[0]}{cc[1]}"
        bench_path = find_bench("cuda", arch) or build("cuda", cuda_arch=arch)
    else:
        print(f"{device.cpu_summary()}; {threads} threads for both")
        bench_path = find_bench(args.isa) or build(args.isa)
    model, tok = models.load(args.model, device="cpu")
    if gpu:  # the Triton step's model: the half-precision format the ladder uses on this GPU
        half = capability.half_dtype(cc).value
        ours = models.load(args.model, device="cuda", dtype=half, verbose=False)[0]
    else:
        ours = model
    with tempfile.TemporaryDirectory() as tmp:
        ggufs = {t: convert(model, tok, Path(tmp), t) for t in ("f16", "q8_0")}
        lengths = dict(prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats)
        timing = dict(lengths, device=args.device)
        around = (lambda: []) if args.no_ladder else (lambda: ladder.run(args.model, **timing))
        rows = [{**r, "round": "before"} for r in around()]
        for kind, path in ggufs.items():
            for r in bench(bench_path, path, threads, args.new_tokens, args.prompt_len, args.repeats, gpu=gpu):
                rows.append({**r, "label": bench_label(kind), "round": "llama.cpp"})
        rows += [{**r, "round": "after"} for r in around()]
        pair_args = (ours, tok, args.model, bench_path, ggufs["q8_0"], threads, args.pairs)
        rows += paired(*pair_args, **lengths, gpu=gpu)
    first = next((r for r in rows if r["label"] == "generate(), fp32 eager"), None)  # none with --no-ladder
    for r in rows:
        if first:
            r["vs_fp32_eager"] = r["decode_tok_s"] / first["decode_tok_s"]
        than_first = f" | {r['vs_fp32_eager']:.2f}x" if first else ""
        print(f"{r['round']:>9} | {r['label']:<50} | {r['decode_tok_s']:8.1f} tokens/s{than_first}")
        keep = {k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) or v is None}
        if gpu:  # the GPU's name files the run; the host CPU is named too
            where = {"device_name": device.name(torch.device("cuda")), "device_type": "cuda"}
            where["cpu"] = device.cpu_summary()
        else:  # a CPU, also on a GPU host
            where = {"device_name": device.name(torch.device("cpu")), "device_type": "cpu"}
        if args.isa != "native":  # a file of its own, and a CPU line that says what was capped
            where["device_name"] += f", {args.isa.upper()} builds"
            where["cpu"] = (
                f"{device.cpu_summary()}; both programs built for {args.isa.upper()} only (PyTorch's ATen, MKL and "
                "oneDNN kernels capped too; FBGEMM's dynamic int8 chooses its own)"
            )
        tag = GPU_TAG if gpu else "llamacpp"
        results.record({**keep, "model": args.model, "threads": threads, **where}, notebook=tag, technique=r["label"])
    ratio = paired_ratio(rows)
    if ratio:
        print(paired_sentence(ratio))
    if gpu:
        print(gpu_target(ratio))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
