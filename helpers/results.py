"""The result log: every notebook appends its measurements here; the last notebook reads them all.

The log is a local JSON-lines file (``results/results.jsonl`` in the repository, or the path in
``WORKBOOK_RESULTS``), git-ignored: each line is one record with the notebook that made it.
``table()`` formats records as a Markdown table; ``plot_tokens_per_s()`` and
``plot_quality_vs_speed()`` are the standard plots.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def path() -> Path:
    """Where the log lives: ``WORKBOOK_RESULTS`` if set, else ``results/results.jsonl`` in the repository."""
    return Path(os.environ.get("WORKBOOK_RESULTS") or ROOT / "results" / "results.jsonl")


def record(rec: dict, notebook: str, **extra) -> dict:
    """Append one measurement (a dict of JSON-able values) to the log, tagged with ``notebook``."""
    row = {**rec, **extra, "notebook": notebook, "logged_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    return row


def load(**match) -> list[dict]:
    """All records in the log whose fields equal every ``match`` item (e.g. ``notebook="00"``)."""
    target = path()
    if not target.exists():
        return []
    rows = []
    for line in target.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if all(row.get(k) == v for k, v in match.items()):
                rows.append(row)
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
            return f"{value:.3g}"
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> str:
    """A Markdown table of ``columns`` from ``rows`` (missing and ``None`` values left blank)."""
    headers = headers or columns
    if len(headers) != len(columns):
        raise ValueError("headers and columns must have the same length.")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) if row.get(c) is not None else "" for c in columns) + " |")
    return "\n".join(lines)


def show(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> None:
    """Display ``table()`` as Markdown in a notebook, or print it elsewhere."""
    text = table(rows, columns, headers)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:
        pass
    print(text)


def plot_tokens_per_s(
    rows: list[dict],
    key: str = "decode_tok_s",
    label: str = "label",
    ax=None,
    limit_key: str | None = "sol_tok_s",
    title: str | None = None,
):
    """Horizontal bars of tokens/s per record; with ``limit_key``, each bar's bandwidth limit as a red tick.

    With limits shown the axis is logarithmic (limits can be 100x the measured speed on a GPU).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ax = ax or plt.subplots(figsize=(8, 1.2 + 0.6 * len(rows)))[1]
    names = [r[label] for r in rows]
    values = [r[key] for r in rows]
    show_limits = bool(limit_key) and all(limit_key in r for r in rows)
    bars = ax.barh(names, values, color="tab:blue", label="measured")
    for bar, value in zip(bars, values, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}", va="center", fontsize=9)
    if show_limits:
        limits = [r[limit_key] for r in rows]
        ax.scatter(limits, names, marker="|", s=500, color="tab:red", label="memory-bandwidth limit", zorder=3)
        for name, limit in zip(names, limits, strict=True):
            ax.annotate(
                f"{limit:,.0f}", (limit, name), textcoords="offset points", xytext=(4, 8), fontsize=8, color="tab:red"
            )
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 3, max(limits) * 3)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens per second" + (" (log scale)" if show_limits else ""))
    ax.set_title(title or "Decode speed")
    return ax


def plot_quality_vs_speed(
    rows: list[dict],
    speed: str = "decode_tok_s",
    quality: str = "perplexity",
    label: str = "label",
    ax=None,
    title: str | None = None,
):
    """Scatter of quality (lower is better) against speed, each point labelled."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for r in rows:
        ax.scatter(r[speed], r[quality])
        ax.annotate(r[label], (r[speed], r[quality]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("tokens per second (higher is better)")
    ax.set_ylabel(f"{quality} (lower is better)")
    ax.set_title(title or "Quality vs speed")
    return ax
