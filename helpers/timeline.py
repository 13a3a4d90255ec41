"""The GPU's timeline of decode steps, from ``torch.profiler``: how many kernels a token runs, and how much of a
token's time the GPU spends running them (busy) or between them (idle).

    python -m helpers.timeline                 # on a GPU: the Triton step and the persistent step, one row each
    python -m helpers.timeline --record        # keep the rows in results/recorded/timeline--<device>.jsonl

A decode step at batch 1 reads a few hundred MB of weights in a few tens of microseconds per layer; each kernel
boundary costs time in which the GPU reads nothing (the slowest program of one kernel finishing, the next
kernel's programs starting). The profiler sees every kernel's start and end on the GPU's clock, so a token's
time splits into busy (some kernel running) and idle (none). Notebook 05 draws one token of each step.

``token_profile`` times a ``FastGPT2``'s greedy decoding: it profiles generating ``2 + tokens`` tokens, and
takes the kernels of the last ``tokens`` tokens (generation ends with the decode steps; copies and fills are
left out, as they are no kernels of a step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings

import torch

from . import bench, models, results
from . import device as devices

SKIP = ("Memcpy", "Memset")  # copies and fills the profiler lists with the kernels: not a step's kernels


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Microseconds covered by at least one of the (start, end) intervals: the GPU's busy time. Kernels may
    overlap (on Hopper the Triton step launches each kernel early, while the one before finishes), so their
    durations are not simply added."""
    busy, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        busy += stop - max(start, end)
        end = stop
    return busy


def split_tokens(events: list[tuple[str, float, float]], tokens: int) -> list[list[tuple[str, float, float]]]:
    """The last ``tokens`` tokens' kernels, one list per token: ``events`` (name, start, end), sorted by start, end
    with the decode steps, and each token runs the same number of kernels."""
    if tokens < 1 or len(events) < tokens:
        raise ValueError(f"need at least one kernel per token: {len(events)} kernels for {tokens} tokens")
    return [list(chunk) for chunk in _chunks(events, tokens)]


def _chunks(events, tokens):
    per = len(events) // tokens
    tail = events[len(events) - per * tokens :]
    for i in range(tokens):
        yield tail[i * per : (i + 1) * per]


def summarize(per_token: list[list[tuple[str, float, float]]]) -> dict:
    """Kernels per token, and the median token's period (start to the next token's start), busy and idle time
    (microseconds), with one token's kernels as (start, end) from its start, for a plot."""
    starts = [tok[0][1] for tok in per_token]
    periods = [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
    busy = [union_us([(s, e) for _, s, e in tok]) for tok in per_token[:-1]]
    if not periods:
        raise ValueError("need at least two tokens to measure a token's period")
    middle = per_token[len(per_token) // 2]
    t0 = middle[0][1]
    period = statistics.median(periods)
    busy_us = statistics.median(busy)
    return {
        "kernels_per_token": len(per_token[0]),
        "period_us": period,
        "period_us_min": min(periods),
        "period_us_max": max(periods),
        "busy_us": busy_us,
        "idle_us": max(period - busy_us, 0.0),
        "busy_fraction": min(busy_us / period, 1.0),
        "kernel_names": sorted({name for name, _, _ in middle}),
        "one_token": [[round(s - t0, 2), round(e - t0, 2)] for _, s, e in middle],
    }


def kernel_events(run) -> list[tuple[str, float, float]]:
    """Profile ``run()`` on the GPU; its kernels as (name, start, end), microseconds, sorted by start."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profiler's note on clearing events between cycles
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
    kernels = [
        (e.name, e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith(SKIP)
    ]
    return sorted(kernels, key=lambda k: k[1])


def token_profile(fast, ids: torch.Tensor, tokens: int = 16) -> dict:
    """``summarize`` of a FastGPT2's last ``tokens`` greedy decode tokens out of ``2 + tokens`` (GPU only)."""
    if not torch.cuda.is_available():
        raise RuntimeError("token_profile reads the GPU's kernel timeline: it needs a CUDA GPU.")
    n = 2 + tokens
    fast.generate(ids, n)  # compile and capture CUDA graphs outside the profile
    return summarize(split_tokens(kernel_events(lambda: fast.generate(ids, n)), tokens))


def steps() -> list[tuple[str, dict]]:
    """The GPU decode steps the timeline compares: (label, FastGPT2 keyword arguments)."""
    from .ladder import GRAPH_STEPS

    graphs = f"{GRAPH_STEPS} steps per CUDA graph"
    return [
        (f"Triton step (a kernel a stage), {graphs}", dict(graph_steps=GRAPH_STEPS, kernels=True)),
        (f"persistent step (one kernel a token), {graphs}", dict(graph_steps=GRAPH_STEPS, kernels="persistent")),
    ]


def run(model_name: str = "gpt2-124m-random", tokens: int = 16, prompt_len: int = 32) -> list[dict]:
    """One row per step of ``steps``: its ``token_profile`` on this GPU, in bf16."""
    from . import fastgen

    dev = devices.pick("cuda")
    model, tok = models.load(model_name, device=dev, dtype=torch.bfloat16, verbose=False)
    ids = bench.prompt_ids(tok, prompt_len, 1, dev)
    rows = []
    for label, kw in steps():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = fastgen.FastGPT2(model, **kw)
        row = {"label": label, "model": model_name, "n_layer": model.config.n_layer, "dtype": "bf16"}
        row |= token_profile(fast, ids, tokens)
        row |= {"device": "cuda", "device_name": devices.name(dev), "torch": torch.__version__}
        rows.append(row)
        del fast
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-124m-random", help="a model name of helpers.models")
    parser.add_argument("--tokens", type=int, default=16, help="decode tokens profiled (at least 2)")
    parser.add_argument("--record", action="store_true", help="keep the rows in results/recorded/ (committed)")
    args = parser.parse_args(argv)
    if args.tokens < 2:
        parser.error(f"--tokens must be at least 2 (a token's period is measured to the next), got {args.tokens}")
    if not torch.cuda.is_available():
        parser.error("the timeline is the GPU's: torch sees no CUDA GPU here")
    if args.record:
        os.environ["WORKBOOK_RECORD"] = "1"
        os.environ.setdefault("WORKBOOK_COMMAND", "python -m helpers.timeline " + " ".join(argv or sys.argv[1:]))
    for row in run(args.model, args.tokens):
        results.record(row, notebook="timeline", technique=row["label"])
        print(
            f"{row['label']}: {row['kernels_per_token']} kernels a token, {row['period_us']:.1f} us a token "
            f"({row['period_us_min']:.1f}-{row['period_us_max']:.1f}), busy {row['busy_us']:.1f} us "
            f"({row['busy_fraction']:.0%}), idle {row['idle_us']:.1f} us"
        )


if __name__ == "__main__":
    main()
