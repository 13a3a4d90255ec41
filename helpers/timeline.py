"""The GPU's timeline of decode steps, from ``torch.profiler``: how many kernels a token runs, and how much of a
token's time the GPU spends running them (busy) or between them (idle).

    python -m helpers.timeline                 # on a GPU: the Triton step and the three one-launch steps, a row each
    python -m helpers.timeline --record        # keep the rows in results/recorded/timeline--<device>.jsonl

A decode step at batch 1 reads a few hundred MB of weights in a few tens of microseconds per layer; each kernel
boundary costs time in which the GPU reads nothing (the slowest program of one kernel finishing, the next
kernel's programs starting). The profiler sees every kernel's start and end on the GPU's clock, so a token's
time splits into busy (some kernel running) and idle (none). Notebook 05 draws one token of each step.

``token_profile`` times a ``FastGPT2``'s greedy decoding: it profiles generating 2 tokens and ``2 + tokens``
tokens, and a step's kernels are those the longer generation runs more often (``decode_kernels``). A one-kernel
token is all busy to the profiler; the streaming step's row adds its blocks' own clocks (``stream_clocks``): the
share of the token they spend waiting for each other, computing, arriving.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections import Counter

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


def decode_kernels(
    short: list[tuple[str, float, float]], long: list[tuple[str, float, float]], tokens: int
) -> list[list[tuple[str, float, float]]]:
    """The last ``tokens`` decode tokens' kernels, one list per token, from the profiles of two generations
    that differ by ``tokens`` decode steps (``short`` and ``long``, each sorted by start).

    A step's kernels are those whose count grows from one profile to the other (the prompt's pass, the first
    token's choice and the copies around them run once in both); their added count over ``tokens`` is the
    kernels a token. This holds for the hand-written steps, whose kernels the prompt's pass never runs."""
    if tokens < 1:
        raise ValueError(f"tokens must be at least 1, got {tokens}")
    count = Counter(name for name, _, _ in long)
    count.subtract(name for name, _, _ in short)
    names = {name for name, extra in count.items() if extra > 0}
    added = sum(count[name] for name in names)
    if added == 0 or added % tokens:
        raise ValueError(f"{added} more kernels for {tokens} more tokens: not a whole number of kernels a token")
    per = added // tokens
    steps = [e for e in long if e[0] in names]
    tail = steps[len(steps) - per * tokens :]
    return [tail[i * per : (i + 1) * per] for i in range(tokens)]


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
    """``summarize`` of a FastGPT2's greedy decode tokens: the kernels of generating ``2 + tokens`` tokens
    against those of generating 2 (``decode_kernels``; GPU only)."""
    if not torch.cuda.is_available():
        raise RuntimeError("token_profile reads the GPU's kernel timeline: it needs a CUDA GPU.")
    profiles = []
    for n in (2, 2 + tokens):
        fast.generate(ids, n)  # compile and capture CUDA graphs outside the profile
        profiles.append(kernel_events(lambda n=n: fast.generate(ids, n)))
    return summarize(decode_kernels(*profiles, tokens))


def stream_clocks(model, ids: torch.Tensor, tokens: int = 16) -> dict:
    """The streaming step's own clocks (``stream_step.clock_shares``) for the last of ``2 + tokens`` greedy
    tokens of ``model`` (bf16 on a GPU), from a step compiled with its ``PROFILE`` switch."""
    from . import fastgen
    from .fastgen import stream_step
    from .ladder import GRAPH_STEPS

    saved = stream_step.ABLATE
    stream_step.ABLATE = saved | {"PROFILE": 1}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = fastgen.FastGPT2(model, graph_steps=GRAPH_STEPS, kernels="stream")
        fast.generate(ids, 2 + tokens)
        torch.cuda.synchronize()
        return stream_step.clock_shares(fast._greedy.profile())
    finally:
        stream_step.ABLATE = saved


def steps(device=None, config=None) -> list[tuple[str, dict]]:
    """The GPU decode steps the timeline compares: (label, FastGPT2 keyword arguments). Given the ``device`` and
    the model's ``config``, only the steps that can run there: a step left out is printed with the reason
    (the streaming step's CUDA kernel needs a GPU with enough shared memory: ``stream_step.why_not``)."""
    from . import fastgen
    from .ladder import GRAPH_STEPS

    graphs = f"{GRAPH_STEPS} steps per CUDA graph"
    every = [
        (f"Triton step (a kernel a stage), {graphs}", dict(graph_steps=GRAPH_STEPS, kernels=True)),
        (f"persistent step (one kernel a token), {graphs}", dict(graph_steps=GRAPH_STEPS, kernels="persistent")),
        (f"dataflow step (one kernel a token), {graphs}", dict(graph_steps=GRAPH_STEPS, kernels="dataflow")),
        (f"streaming step (one CUDA kernel a token), {graphs}", dict(graph_steps=GRAPH_STEPS, kernels="stream")),
    ]
    if device is None:
        return every
    kept = []
    for label, kw in every:
        why = fastgen.stream_step.why_not(device, config) if kw["kernels"] == "stream" else None
        if why:
            print(f"{label}: not profiled: {why}")
        else:
            kept.append((label, kw))
    return kept


def profile(model, ids: torch.Tensor, tokens: int = 16, progress: bool = False) -> list[dict]:
    """One row per step of ``steps`` that can run on the GPU ``ids`` lies on: its ``token_profile`` for greedy
    tokens after the prompt ``ids``, and for the streaming step also which variant of its kernel ran
    (``stream_switches``) and its blocks' own clocks (``stream_clock``). Notebook 05 and ``run`` both use it."""
    from tqdm.auto import tqdm

    from . import fastgen
    from .ladder import short_dtype

    dev = ids.device
    if dev.type != "cuda":
        raise ValueError(f"timeline.profile reads a GPU's kernel timeline: give it a prompt on a CUDA GPU, not {dev}.")
    rows = []
    for label, kw in tqdm(steps(dev, model.config), desc="profiling", disable=not progress):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = fastgen.FastGPT2(model, **kw)
        row = {"label": label, "n_layer": model.config.n_layer, "dtype": short_dtype(fast.dtype)}
        row |= token_profile(fast, ids, tokens)
        switches = fast._greedy.switches if kw["kernels"] == "stream" else None  # the variant of the kernel timed
        del fast  # before stream_clocks builds its own step: one packed copy of the weights on the GPU at a time
        if switches is not None:  # and the streaming step's blocks' own clocks
            row |= {"stream_switches": switches, "stream_clock": stream_clocks(model, ids, tokens)}
        row |= {"device": "cuda", "device_type": "cuda", "device_name": devices.name(dev), "torch": torch.__version__}
        rows.append(row)
    return rows


def run(model_name: str = "gpt2-124m-random", tokens: int = 16, prompt_len: int = 32) -> list[dict]:
    """``profile`` of ``model_name`` in bf16 on this GPU, a ``prompt_len``-token prompt."""
    dev = devices.pick("cuda")
    model, tok = models.load(model_name, device=dev, dtype=torch.bfloat16, verbose=False)
    ids = bench.prompt_ids(tok, prompt_len, 1, dev)
    return [{**row, "model": model_name} for row in profile(model, ids, tokens)]


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
        results.start_recording("timeline", argv)
    for row in run(args.model, args.tokens):
        results.record(row, notebook="timeline", technique=row["label"])
        print(
            f"{row['label']}: {row['kernels_per_token']} kernels a token, {row['period_us']:.1f} us a token "
            f"({row['period_us_min']:.1f}-{row['period_us_max']:.1f}), busy {row['busy_us']:.1f} us "
            f"({row['busy_fraction']:.0%}), idle {row['idle_us']:.1f} us"
        )


if __name__ == "__main__":
    main()
