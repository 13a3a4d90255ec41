"""The speed ladder: every decoding setup of the workbook, measured in one run on this device.

    python -m helpers.ladder                      # GPT-2 124M architecture, 32-token prompt, 128 new tokens
    python -m helpers.ladder --quick              # fewer tokens and repeats (a smoke test)
    python -m helpers.ladder --model pocket --out my-ladder.json
    python -m helpers.ladder --persistent         # on a GPU, also the three one-launch steps (opt-in)
    python -m helpers.ladder --batches 8 64       # on a GPU, also the compiled and the batched step at batches 8, 64

Rows: Hugging Face ``generate()`` in fp32 eager, in bf16, with a static cache (which transformers
compiles by itself), then ``helpers.fastgen.FastGPT2`` (on a GPU compiled with CUDA graphs, compiled with
``GRAPH_STEPS`` decode steps captured per CUDA graph, and its hand-written Triton decode step with as many
steps per graph; on a CPU eager and compiled) and FastGPT2 with int8 weights (on a CPU also llama.cpp's q8_0
format computed by the workbook's own kernel, ``helpers.q8``, where a C++ compiler can build it). Each row
reports decode tokens/s at batch 1, its ratio to the first row, and its fraction of the memory-bandwidth limit
(the device's measured bandwidth divided by the bytes one step must read: the weights of that row plus the KV
cache). bf16 rows run on GPUs only: CPUs without bf16 matrix units run it slower than fp32, and the ladder is
about speed. The table is printed and written as JSON (default ``results/ladder-<device>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from datetime import date, datetime
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import bench, capability, fastgen, models, q8, results
from . import device as devices
from .notebook import quiet

GRAPH_STEPS = 16  # decode steps captured in one CUDA graph by the graph_steps rows on GPUs

TARGETS = {
    "cuda": "fast decoder (bf16) >= 3000 tokens/s, >= 25% of the bandwidth limit, >= 6x the best generate() "
    "row and >= 25x generate() fp32 eager; its time to first token <= the best other row's, or within the runs' "
    "spread",
    "cpu": "fastest row >= 4x generate() fp32 eager",
}


Q8_COMPILED_LABEL = "FastGPT2, q8_0 weights (workbook kernel), compiled"  # the kernel inside a compiled step
Q8_LABEL = "FastGPT2, q8_0 weights (workbook kernel), decode step in C++"  # the fastest CPU row (notebook 03c)


def short_dtype(dtype: torch.dtype) -> str:
    """The rows' name of a dtype: bf16, fp16, or fp32."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def triton_label(kind: str = "bf16") -> str:
    """The label of the hand-written Triton step's row (``kind``: its half-precision format)."""
    return f"FastGPT2, {kind}, Triton kernels, {GRAPH_STEPS} steps per CUDA graph"


def _rows(
    hf32, hf16, on_gpu: bool, half: str = "bf16", triton_step: bool = True, persistent: bool = False, stream=True
):
    """(label, model passed to bench.generation, factory of a generate_fn or a FastGPT2, "fast" for FastGPT2 rows).

    ``half`` names the GPU's half-precision format (bf16, or fp16 before compute capability 8.0);
    ``triton_step`` adds the hand-written Triton step's row (only on GPUs where it was checked), and
    ``persistent`` after it the rows of the same stages in one kernel a token (``--persistent``), the streaming
    step's only where ``stream`` (its CUDA kernel needs a GPU with enough shared memory: ``stream_step.why_not``).
    """
    rows = [("generate(), fp32 eager", hf32, lambda: bench.hf_generate(hf32), None)]
    if on_gpu:
        rows.append((f"generate(), {half} eager", hf16, lambda: bench.hf_generate(hf16), None))
    base = hf16 if on_gpu else hf32
    kind = half if on_gpu else "fp32"
    static = "static cache + compile" if on_gpu else "static cache (transformers compiles it on GPUs only)"
    rows.append(
        (
            f"generate(), {kind}, {static}",
            base,
            lambda: bench.hf_generate(base, cache_implementation="static"),
            None,
        )
    )
    if on_gpu:
        rows.append((f"FastGPT2, {kind}, compiled + CUDA graphs", base, lambda: fastgen.FastGPT2(base), "fast"))
        rows.append(
            (
                f"FastGPT2, {kind}, compiled, {GRAPH_STEPS} steps per CUDA graph",
                base,
                lambda: fastgen.FastGPT2(base, graph_steps=GRAPH_STEPS, kernels=False),
                "fast",
            )
        )
    if on_gpu and triton_step:
        rows.append(
            (
                triton_label(kind),
                base,
                lambda: fastgen.FastGPT2(base, graph_steps=GRAPH_STEPS, kernels=True),
                "fast",
            )
        )
        if persistent:  # the steps of one launch a token: grid barriers, tasks that wait on counts, streamed weights
            one_launch = [("one persistent Triton kernel", "persistent"), ("one dataflow Triton kernel", "dataflow")]
            for name, kernels in one_launch + ([("one streaming CUDA kernel", "stream")] if stream else []):
                rows.append(
                    (
                        f"FastGPT2, {kind}, {name} a token, {GRAPH_STEPS} steps per CUDA graph",
                        base,
                        lambda kernels=kernels: fastgen.FastGPT2(base, graph_steps=GRAPH_STEPS, kernels=kernels),
                        "fast",
                    )
                )
    if on_gpu:
        rows.append(
            ("FastGPT2, int8 weights, compiled + CUDA graphs", base, lambda: fastgen.FastGPT2(base, int8=True), "fast")
        )
    else:
        rows.append((f"FastGPT2, {kind}, eager", base, lambda: fastgen.FastGPT2(base, compile=False), "fast"))
        rows.append((f"FastGPT2, {kind}, compiled", base, lambda: fastgen.FastGPT2(base, compile=True), "fast"))
        rows.append(
            ("FastGPT2, int8 weights (dynamic int8), eager", base, lambda: fastgen.FastGPT2(base, int8=True), "fast")
        )
        ok, why = q8.available()
        if ok:
            compiled = lambda: fastgen.FastGPT2(base, int8="q8_0", compile=True, kernels=False)  # noqa: E731
            rows.append((Q8_COMPILED_LABEL, base, compiled, "fast"))
            rows.append((Q8_LABEL, base, lambda: fastgen.FastGPT2(base, int8="q8_0", kernels=True), "fast"))
        else:
            print(f"ladder: no q8_0 row: {why}")
    return rows


def batch_rows(base, batches, kind: str = "bf16"):
    """(label, make a FastGPT2, batch) for each batch of ``batches`` (GPU): the compiled step and the batched Triton
    step (``fastgen.batched_step``), both with ``GRAPH_STEPS`` decode steps per CUDA graph."""
    steps = [("compiled", False), ("batched Triton step", True)]  # (label, FastGPT2's kernels)
    return [
        (
            f"FastGPT2, {kind}, {name}, {GRAPH_STEPS} steps per CUDA graph, batch {b}",
            lambda kernels=kernels: fastgen.FastGPT2(base, graph_steps=GRAPH_STEPS, kernels=kernels),
            b,
        )
        for b in batches
        for name, kernels in steps
    ]


def run(
    model_name: str = "gpt2-124m-random",
    *,
    prompt_len: int = 32,
    new_tokens: int = 128,
    repeats: int = 5,
    device=None,
    progress: bool = True,
    persistent: bool = False,
    batches: tuple[int, ...] = (),
) -> list[dict]:
    """Measure every row of the ladder on ``device`` and return the records (ratios filled in). ``batches``
    (GPU): also the compiled and the batched Triton step at each of these batches, with the GPU's measured bf16
    matrix-product throughput in their records (for the roofline)."""
    quiet()
    dev = torch.device(device or devices.pick())
    on_gpu = dev.type == "cuda"
    hf32, tok = models.load(model_name, device=dev, verbose=False)
    cc = capability.capability(dev) if on_gpu else None
    half, step = capability.half_dtype(cc), capability.triton_step(cc)
    if on_gpu and progress:
        print(f"half precision: {models.dtype_name(half.value)} ({half.why}); Triton step: {step.why}")
    hf16 = models.load(model_name, device=dev, dtype=half.value, verbose=False)[0] if on_gpu else None
    bw = devices.bandwidth(dev)
    records = []
    short = short_dtype(half.value)
    stream_why = fastgen.stream_step.why_not(dev, hf32.config) if on_gpu and persistent else None
    if stream_why and progress:
        print(f"ladder: no streaming step row: {stream_why}")
    rows = _rows(hf32, hf16, on_gpu, half=short, triton_step=bool(step), persistent=persistent, stream=not stream_why)
    rows = [(*row, 1) for row in rows]
    if batches and not (on_gpu and step):
        print("ladder: no batch rows: the batched Triton step runs on GPUs where the Triton step was checked")
    elif batches:
        rows += [(label, hf16, make, "fast", b) for label, make, b in batch_rows(hf16, batches, short)]
    peak = devices.matmul_flops(dev, half.value) if batches and on_gpu else None
    for label, model, make, kind, batch in tqdm(rows, desc="ladder", disable=not progress):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            made = make()
            fn = made.generate_fn() if kind == "fast" else made
            rec = bench.generation(
                model,
                tok,
                prompt_len=prompt_len,
                new_tokens=new_tokens,
                batch=batch,
                warmup=2,
                repeats=repeats,
                generate_fn=fn,
                label=label,
                model_name=model_name,
                bandwidth=bw,
                model_bytes=made.weight_bytes() if kind == "fast" else None,
            )
        switches = getattr(getattr(made, "_greedy", None), "switches", None)  # the streaming step's variant
        if switches is not None:
            rec["stream_switches"] = switches
        if batch > 1:
            rec["peak_flops"] = peak  # the GPU's measured matrix-product throughput in this dtype (FLOP/s)
        if not on_gpu:
            rec["cpu"] = devices.cpu_summary()  # the targets line names the CPU with its instruction sets
        records.append(rec)
        del made, fn
    first = records[0]["decode_tok_s"]
    for rec in records:
        rec["ratio"] = rec["decode_tok_s"] / first
    return records


def table(records: list[dict]) -> str:
    lines = ["| setup | tokens/s | vs first row | fraction of bandwidth limit | time to first token (ms) |"]
    lines.append("|---|---|---|---|---|")
    for r in records:
        lines.append(
            f"| {r['label']} | {r['decode_tok_s']:,.0f} | {r['ratio']:.2f}x | {r['sol_fraction']:.1%} | "
            f"{r['ttft_ms']:.1f} |"
        )
    return "\n".join(lines)


def verdict(records: list[dict]) -> list[str]:
    """The workbook's targets (WORKBOOK.md section 4), checked against this run."""
    first = records[0]["decode_tok_s"]
    batched = [r for r in records if r.get("batch", 1) > 1]  # the batch rows (--batches) have targets of their own
    records = [r for r in records if r.get("batch", 1) == 1]
    if records[0]["device"] == "cuda":
        fast = max((r for r in records if r["label"].startswith("FastGPT2, bf16")), key=lambda r: r["decode_tok_s"])
        best_hf = max(r["decode_tok_s"] for r in records if r["label"].startswith("generate()"))
        checks = [
            (
                f"fast decoder ({fast['label']}) {fast['decode_tok_s']:,.0f} tokens/s >= 3000",
                fast["decode_tok_s"] >= 3000,
            ),
            (f"{fast['sol_fraction']:.1%} of the bandwidth limit >= 25%", fast["sol_fraction"] >= 0.25),
            (f"{fast['decode_tok_s'] / best_hf:.2f}x the best generate() >= 6x", fast["decode_tok_s"] >= 6 * best_hf),
            (f"{fast['decode_tok_s'] / first:.2f}x generate() fp32 eager >= 25x", fast["decode_tok_s"] >= 25 * first),
        ]
        others = [r for r in records if r is not fast]
        best_first = min(others, key=lambda r: r["ttft_ms"])
        if "ttft_ms_min" in fast:
            checks.append(_ttft_check(fast, best_first))
        else:  # recorded before the prompt's pass was replayed from a CUDA graph: the target came later
            checks.append(("time to first token: this run predates that target (no spread recorded)", None))
        checks += _batch_checks(batched)
    else:
        best = max(records[1:], key=lambda r: r["decode_tok_s"])
        ratio = best["decode_tok_s"] / first
        where = records[0].get("cpu") or records[0].get("device_name", "this CPU")  # the CPU with its instruction sets
        checks = [(f"fastest ({best['label']}) {ratio:.2f}x generate() fp32 eager >= 4x, on {where}", ratio >= 4)]
    return [f"[{'not checked' if ok is None else 'met' if ok else 'NOT met'}] {text}" for text, ok in checks]


def _batch_checks(rows: list[dict]) -> list[tuple[str, bool]]:
    """At each batch of the run, the batched Triton step ahead of the compiled step (both medians, with the
    slowest and fastest runs)."""
    checks = []
    for b in sorted({r["batch"] for r in rows}):
        at = [r for r in rows if r["batch"] == b]
        mine = next((r for r in at if "batched Triton step" in r["label"]), None)
        other = next((r for r in at if ", compiled," in r["label"]), None)
        if mine and other:
            speeds = [
                f"{r['decode_tok_s']:,.0f} ({r['decode_tok_s_min']:,.0f}-{r['decode_tok_s_max']:,.0f})"
                for r in (mine, other)
            ]
            ahead = mine["decode_tok_s"] > other["decode_tok_s"]
            text = (
                f"batch {b}: batched Triton step {speeds[0]} tokens/s {'ahead of' if ahead else 'not ahead of'} "
                f"the compiled step's {speeds[1]} ({mine['decode_tok_s'] / other['decode_tok_s']:.2f}x)"
            )
            checks.append((text, ahead))
    return checks


def _ttft_check(fast: dict, best: dict) -> tuple[str, bool]:
    """The fast row's time to first token is no worse than the best other row's: a lower or equal median, or
    (where the records have the runs' ranges) ranges that overlap, a tie within the runs' spread."""
    if fast["ttft_ms"] <= best["ttft_ms"]:
        how, ok = "<=", True
    elif "ttft_ms_min" in fast and "ttft_ms_max" in best and fast["ttft_ms_min"] <= best["ttft_ms_max"]:
        how, ok = "within the runs' spread of", True
    else:
        how, ok = "above", False
    return f"time to first token {_ttft(fast)} {how} the best other row's, {_ttft(best)} ({best['label']})", ok


def _ttft(r: dict) -> str:
    """A row's time to first token: the median, and the range of its runs where the record has it."""
    spread = f" ({r['ttft_ms_min']:.2f}-{r['ttft_ms_max']:.2f})" if "ttft_ms_min" in r else ""
    return f"{r['ttft_ms']:.2f} ms{spread}"


def _at_least(low: int):
    """An argparse type: an integer >= ``low``, with an error that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-124m-random", help="a model name of helpers.models")
    parser.add_argument("--prompt-len", type=_at_least(1), default=32)
    parser.add_argument("--new-tokens", type=_at_least(2), default=128)
    parser.add_argument("--repeats", type=_at_least(1), default=5)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    parser.add_argument("--quick", action="store_true", help="16 new tokens, 1 repeat: a smoke test, not a result")
    parser.add_argument("--out", default=None, help="JSON file (default: results/ladder-<device>.json)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument(
        "--record", action="store_true", help="keep the rows in results/recorded/ladder--<device>.jsonl (committed)"
    )
    parser.add_argument(
        "--batches",
        type=_at_least(2),
        nargs="+",
        default=[],
        help="on a GPU, also the compiled and the batched Triton step at these batches (e.g. --batches 8 64)",
    )
    parser.add_argument(
        "--persistent",
        action="store_true",
        help="on a GPU, add the rows of the one-launch steps (persistent_step, dataflow_step, stream_step; opt-in)",
    )
    args = parser.parse_args(argv)
    try:
        dev = devices.pick(args.device)  # the same check WORKBOOK_DEVICE gets: cpu, cuda, cuda:N or mps
        models.resolve(args.model, verbose=False)
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    args.device = str(dev)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"results/ladder-{dev.type}-{stamp}.json")  # a new file per run: none overwrites another
    if out.exists() and not args.force:  # said before anything is measured
        parser.error(f"{out} exists; choose another --out or pass --force to overwrite it.")
    if args.record:
        results.start_recording("ladder", argv)
    if args.quick:
        args.new_tokens, args.repeats = 16, 1
        os.environ["WORKBOOK_QUICK"] = "1"  # recorded rows say they come from a smoke test
    records = run(
        args.model,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        device=args.device,
        persistent=args.persistent,
        batches=tuple(args.batches),
    )
    kind = records[0]["device"]
    print(
        f"\n{records[0]['device_name']}, torch {torch.__version__}, {date.today().isoformat()}, {args.model}, "
        f"batch 1, {args.prompt_len}-token prompt, {args.new_tokens} new tokens, median of {args.repeats}\n"
    )
    print(table(records))
    print(f"\ntargets ({TARGETS[kind]}):")
    for line in verdict(records):
        print("  " + line)
    for r in records:
        results.record({**r, "model": args.model}, notebook="ladder", technique=r["label"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"records": records, "targets": verdict(records)}, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
