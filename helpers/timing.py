"""The workbook's one timing discipline: wait for the device, warm up, repeat, keep the median and the spread.

Every module that times something (``bench``, ``device``'s bandwidth, ``prune``'s CSR timings) uses
``time_fn()`` from here; this module imports nothing else of the workbook, so it can be used from anywhere.
"""

from __future__ import annotations

import statistics
import time

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so host clocks measure what the device did (every GPU there is when ``None``)."""
    kind = torch.device(device).type if device is not None else None
    if kind == "cuda" or (kind is None and torch.cuda.is_available()):
        torch.cuda.synchronize()
    elif kind == "mps":
        torch.mps.synchronize()


def time_fn(fn, *, warmup: int = 2, repeats: int = 5, device=None) -> dict:
    """Run ``fn()`` ``warmup`` times, then time ``repeats`` runs; return median, min, max and all times (s).

    ``device`` is what to wait for around each run (``None``: any GPU there is).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be at least 1 and warmup at least 0; got {repeats} and {warmup}.")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "times": times}
