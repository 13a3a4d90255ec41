"""The leaderboard of notebook 07: every technique and stack, measured the same way, kept in the result log.

An entry is measured once per (entry, model, device, mode) and recorded with ``leaderboard=True``; a later
run (or a notebook run alone) takes what the log already holds and measures only what is missing:

    row = leaderboard.entry("int8 + fast decoder", measure, model_name="pocket", device_name=device.name())

``measure()`` returns a dict with at least ``tok_s`` (decode tokens/s), ``perplexity`` and ``MiB`` (weights
one decode step reads). ``pareto`` marks the entries no other entry beats on both axes.
"""

from __future__ import annotations

from . import results
from .notebook import is_quick


def lookup(name: str, model_name: str, device_name: str) -> dict | None:
    """The latest logged leaderboard row for this entry, model, device and mode (quick or full), or None."""
    rows = results.load(leaderboard=True, entry=name, model=model_name, device_name=device_name, quick=is_quick())
    return rows[-1] if rows else None


def entry(name: str, measure, *, model_name: str, device_name: str, notebook: str, refresh: bool = False) -> dict:
    """The entry's row from the log, or ``measure()`` recorded to the log when missing (or ``refresh``)."""
    if not refresh:
        row = lookup(name, model_name, device_name)
        if row is not None:
            return {**row, "source": "log"}
    rec = measure()
    for key in ("tok_s", "perplexity", "MiB"):
        if key not in rec:
            raise ValueError(f"measure() for {name!r} must return {key!r}; it returned {sorted(rec)}.")
    row = {
        **rec,
        "entry": name,
        "model": model_name,
        "device_name": device_name,
        "quick": is_quick(),
        "leaderboard": True,
    }
    return {**results.record(row, notebook=notebook, technique=name), "source": "measured now"}


def pareto(
    rows: list[dict], faster: str = "tok_s", better: str = "perplexity", lower_is_faster: bool = False
) -> list[bool]:
    """For each row, whether no other row is at least as good on both axes and strictly better on one.

    ``faster`` is maximized (minimized with ``lower_is_faster``, e.g. for sizes), ``better`` minimized.
    """
    sign = -1 if lower_is_faster else 1

    def beats(a: dict, b: dict) -> bool:
        fa, fb = sign * a[faster], sign * b[faster]
        return fa >= fb and a[better] <= b[better] and (fa > fb or a[better] < b[better])

    return [not any(beats(o, r) for o in rows if o is not r) for r in rows]
