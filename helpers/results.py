"""The result log, recorded runs from other devices, verdicts from data, and the standard plots.

- The log is a local JSON-lines file (``results/results.jsonl`` in the repository, or the path in
  ``WORKBOOK_RESULTS``), git-ignored: each line is one record with the notebook that made it. Notebook 07
  reads it all.
- Recorded runs: with ``WORKBOOK_RECORD=1`` every ``record()`` also goes to
  ``results/recorded/<notebook>--<device>.jsonl``, which is committed. That is how a figure measured on
  another device (the lent H100 / H200) reaches a notebook executed on a CPU, and the README: by code that
  reads the file (``show_recorded()``), with the device, date and versions of the run that wrote it.
  ``python -m helpers.readme`` rewrites the README's tables from these files; a test checks them.
- ``verdict(a, b)`` turns two measurements with their spread into the sentence a notebook prints
  ("1.31x faster", "within noise"), so that no comparison is typed into prose.
- ``table()`` formats records as a Markdown table; ``plot_tokens_per_s()`` and
  ``plot_quality_vs_speed()`` are the standard plots.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"  # the workbook's notebooks: a recorded tag that names none is a command's (the ladder)
RECORDED = ROOT / "results" / "recorded"  # committed: runs on other devices, read by notebooks and the README
_started: set[Path] = set()  # recorded files this process has begun (each run replaces its file)


def path() -> Path:
    """Where the log lives: ``WORKBOOK_RESULTS`` if set, else ``results/results.jsonl`` in the repository."""
    target = Path(os.environ.get("WORKBOOK_RESULTS") or ROOT / "results" / "results.jsonl")
    if target.suffix != ".jsonl" or target.is_dir():
        raise ValueError(
            f"WORKBOOK_RESULTS={str(target)!r}: the result log must be a .jsonl file (JSON lines), "
            "for example results/results.jsonl."
        )
    return target


def _append(target: Path, line: str, mode: str = "a") -> None:
    """Write one JSON line; if the file's last line was cut short (a crash mid-write), start on a new line."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, mode + "b" if mode == "w" else "a+b") as f:
        if mode != "w" and f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((line + "\n").encode())


def read_jsonl(target: Path) -> list[dict]:
    """Every good record of a JSON-lines file; a bad line is skipped with a warning naming the file and line."""
    import warnings

    rows = []
    for number, line in enumerate(target.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            warnings.warn(f"{target}:{number} is not a JSON record and was skipped: {line[:80]!r}", stacklevel=2)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            warnings.warn(f"{target}:{number} is not a JSON object and was skipped", stacklevel=2)
    return rows


# the commands that record a tag which is neither a notebook nor named for its helper module
COMMANDS = {"llamacpp_gpu": "python -m helpers.llamacpp --device cuda --record"}


def start_recording(module: str, argv=None) -> None:
    """A command's ``--record``: keep this process's records in ``results/recorded/`` (``WORKBOOK_RECORD``),
    with the command that made them (``python -m helpers.<module> <arguments>``) unless one is set already."""
    os.environ["WORKBOOK_RECORD"] = "1"
    args = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("WORKBOOK_COMMAND", " ".join([f"python -m helpers.{module}", *args]))


def recording() -> bool:
    """True when ``WORKBOOK_RECORD`` asks to keep this run's records in ``results/recorded/`` (committed)."""
    from .notebook import env_flag

    return env_flag("WORKBOOK_RECORD")


def run_context() -> dict:
    """What every recorded row carries: device, CPU instruction sets, versions, date, mode and command."""
    import torch
    import transformers

    from . import device as devices
    from .notebook import is_quick

    dev = devices.pick()
    return {
        "device_name": devices.name(dev),
        "device_type": dev.type,
        "cpu": devices.cpu_summary(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "quick": is_quick(),
        "command": os.environ.get("WORKBOOK_COMMAND") or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def slug(text: str) -> str:
    """A file-name-safe form of a device name: ``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _json_safe(value):
    """Numbers stay numbers: a 0-d tensor or NumPy scalar becomes a float, never the string 'tensor(1.)'."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} in the result log: convert it to a number or string.")


def record(rec: dict, notebook: str, **extra) -> dict:
    """Append one measurement (a dict of JSON-able values) to the log, tagged with ``notebook``.

    With ``WORKBOOK_RECORD=1`` the row, with ``run_context()``, also goes to the recorded file of this
    notebook and device (``results/recorded/<notebook>--<device>.jsonl``); the first row a process writes
    there replaces what an earlier run of the same notebook on the same device left. A row with its own
    ``device_name`` and ``device_type`` is filed under that device.
    """
    from .notebook import is_quick

    row = {"quick": is_quick(), **rec, **extra, "notebook": notebook, "logged_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    line = json.dumps(row, default=_json_safe)  # fails before anything is written if a value cannot be stored
    _append(path(), line)
    if recording():
        # a row that names its own device (a CPU measured on a GPU machine, say) is filed under that device
        ctx = run_context() | {k: row[k] for k in ("device_name", "device_type") if k in row}
        file = RECORDED / f"{notebook}--{slug(ctx['device_name'])}.jsonl"
        _append(file, json.dumps({**ctx, **row}, default=_json_safe), "a" if file in _started else "w")
        _started.add(file)
    return json.loads(line)


def load(**match) -> list[dict]:
    """All records in the log whose fields equal every ``match`` item (e.g. ``notebook="00"``)."""
    target = path()
    if not target.exists():
        return []
    return [row for row in read_jsonl(target) if all(row.get(k) == v for k, v in match.items())]


def _fmt(value, spec: str = "") -> str:
    if spec and isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
            return f"{value:.3g}"
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> str:
    """A Markdown table of ``columns`` from ``rows`` (missing and ``None`` values shown as "-").

    A column may carry a format after a colon: ``"decode_tok_s:,.0f"``, ``"sol_fraction:.1%"``.
    """
    names = [c.split(":", 1)[0] for c in columns]
    specs = [c.split(":", 1)[1] if ":" in c else "" for c in columns]
    headers = headers or names
    if len(headers) != len(columns):
        raise ValueError("headers and columns must have the same length.")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_fmt(row[n], f) if row.get(n) is not None else "-" for n, f in zip(names, specs, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def show(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> None:
    """Display ``table()`` as Markdown in a notebook, or print it elsewhere."""
    _display_markdown(table(rows, columns, headers))


def _display_markdown(text: str) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:
        pass
    print(text)


def _matches(row: dict, key: str, value) -> bool:
    """``key=value`` is equality; ``key__prefix=value`` asks the field to start with ``value``."""
    if key.endswith("__prefix"):
        return str(row.get(key[: -len("__prefix")], "")).startswith(value)
    return row.get(key) == value


def recorded(notebook: str, device_type: str | None = None, **match) -> dict[str, list[dict]]:
    """Recorded rows of ``notebook`` whose fields equal every ``match`` item, grouped by file.

    A match key ending in ``__prefix`` (``technique__prefix="compile mode"``) matches the start of the field.

    ``device_type`` ("cuda", "cpu") keeps only runs on that kind of device.
    """
    found = {}
    for file in sorted(RECORDED.glob(f"{notebook}--*.jsonl")):
        rows = [r for r in read_jsonl(file) if all(_matches(r, k, v) for k, v in match.items())]
        if device_type:
            rows = [r for r in rows if r.get("device_type") == device_type]
        if rows:
            found[str(file.relative_to(ROOT))] = rows
    return found


def source_line(rows: list[dict], file: str) -> str:
    """Where recorded figures come from: device, CPU, versions, date, mode and file."""
    r = rows[0]
    if r.get("device_type") == "cpu" and r.get("cpu"):
        where = f"CPU: {r['cpu']}"  # the model, the threads and the instruction sets
    else:
        where = r.get("device_name", "?") + (f" (host CPU: {r['cpu']})" if r.get("cpu") else "")
    mode = "quick mode" if r.get("quick") else "full mode"
    return f"{where}, torch {r.get('torch', '?')}, {r.get('date', '?')}, {mode}; recorded in `{file}`"


def recorded_markdown(
    notebook: str, columns: list[str], headers: list[str] | None = None, device_type: str | None = None, **match
) -> str:
    """The recorded rows of ``notebook`` as Markdown: one table per recorded run, each under its source line."""
    return _render(notebook, recorded(notebook, device_type=device_type, **match), columns, headers, device_type)


def _render(notebook, found, columns, headers, device_type) -> str:
    """Recorded rows (``recorded()``'s result) as Markdown tables under their source lines."""
    if not found:
        where = {"cuda": "on a GPU ", "cpu": "on a CPU "}.get(device_type or "", "")
        if (NOTEBOOKS / f"{notebook}.ipynb").exists():
            how = f"python -m helpers.execute --record notebooks/{notebook}.ipynb"
        else:  # a command's records (the ladder, the timeline, the roofline, llama.cpp on a GPU)
            how = COMMANDS.get(notebook, f"python -m helpers.{notebook} --record")
        return (
            f"No run of this {where}has been recorded yet, so there is nothing to show here. (Runs are recorded "
            f"with `{how}` on the device.)"
        )
    parts = []
    for file, rows in found.items():
        parts.append(f"{source_line(rows, file)}:\n\n{table(rows, columns, headers)}")
    return "\n\n".join(parts)


def show_recorded(
    notebook: str, columns: list[str], headers: list[str] | None = None, device_type: str | None = None, **match
) -> dict[str, list[dict]]:
    """Display the recorded rows of ``notebook`` (see ``recorded_markdown()``) and return them."""
    found = recorded(notebook, device_type=device_type, **match)  # the files are read once
    _display_markdown(_render(notebook, found, columns, headers, device_type))
    return found


def run_times(file: str) -> list[dict]:
    """The recorded run times of notebook ``file`` (``"02_mixed_precision.ipynb"``): one row per device and mode."""
    rows = [r for runs in sorted(RECORDED.glob("runs--*.jsonl")) for r in read_jsonl(runs) if r.get("file") == file]
    return sorted(rows, key=lambda r: (bool(r.get("quick")), r.get("device_type") != "cpu", r.get("device_name", "")))


def run_times_markdown(file: str) -> str:
    """How long notebook ``file`` took in its recorded runs, per device and mode, as Markdown."""
    rows = run_times(file)
    if not rows:
        return (
            f"No run of {file} has been recorded yet (`python -m helpers.execute --record notebooks/{file}` "
            "records one)."
        )
    lines = ["**How long this notebook takes**, from its recorded runs (`python -m helpers.execute --record`):", ""]
    for r in rows:
        where = f"CPU: {r['cpu']}" if r.get("device_type") == "cpu" and r.get("cpu") else r.get("device_name", "?")
        mode = "quick mode (what the tests run)" if r.get("quick") else "full mode (the default)"
        lines.append(f"- {mode}: {r['minutes']:.1f} min on {where} (torch {r.get('torch', '?')}, {r.get('date', '?')})")
    return "\n".join(lines)


def show_run_times(file: str) -> list[dict]:
    """Display ``run_times_markdown(file)`` in a notebook (or print it) and return the rows."""
    _display_markdown(run_times_markdown(file))
    return run_times(file)


# ---- verdicts from data -------------------------------------------------------------------------


def _span(m) -> tuple[float, float | None, float | None]:
    """(median, low, high) of a measurement: a number, a (median, low, high) tuple or a dict with them."""
    if isinstance(m, dict):
        return float(m["median"]), m.get("min"), m.get("max")
    if isinstance(m, tuple | list):
        return float(m[0]), float(m[1]), float(m[2])
    return float(m), None, None


def rate(timing: dict, work: float = 1.0) -> dict:
    """Turn a ``bench.time_fn()`` result (seconds) into a rate (``work`` per second) with its spread."""
    return {"median": work / timing["median"], "min": work / timing["max"], "max": work / timing["min"]}


def verdict(
    a,
    b,
    *,
    names: tuple[str, str] = ("A", "B"),
    unit: str = "tokens/s",
    higher_is_better: bool = True,
    words: tuple[str, str] | None = None,
    fmt: str = ",.1f",
    spread: str = "the runs'",
) -> str:
    """One sentence comparing measurement ``a`` with ``b``, with the ratio and the runs' spread.

    ``a`` and ``b`` are numbers, ``(median, low, high)`` tuples or dicts with ``median``/``min``/``max``
    (``bench.time_fn()``; ``rate()`` turns times into rates). When both carry a spread and the ranges
    overlap, the verdict is "within noise"; without a spread it says that it cannot tell noise apart.
    ``words`` names the better and the worse direction (default "faster"/"slower" for rates, "higher"/"lower"
    otherwise, swapped when ``higher_is_better`` is False: "smaller"/"larger", say). ``spread`` names where
    the ranges come from when they are not the runs' slowest and fastest (``"the ±2 SE"`` for a proportion).
    """
    ma, la, ha = _span(a)
    mb, lb, hb = _span(b)
    good, bad = words or (("faster", "slower") if unit.endswith("/s") else ("better", "worse"))
    ratio = ma / mb if mb else float("inf")

    def touch(f):  # two ranges that do not overlap but print with a shared end: one more digit tells them apart
        return None not in (la, ha, lb, hb) and (f"{ha:{f}}" == f"{lb:{f}}" or f"{hb:{f}}" == f"{la:{f}}")

    if touch(fmt) and fmt[-1] == "f" and fmt[-2].isdigit():
        fmt = f"{fmt[:-2]}{int(fmt[-2]) + 1}f"

    def show(m, lo, hi):
        return f"{m:{fmt}}" + (f" ({lo:{fmt}}-{hi:{fmt}})" if lo is not None and hi is not None else "")

    head = f"{names[0]}: {show(ma, la, ha)} {unit} vs {names[1]}: {show(mb, lb, hb)} {unit}: {ratio:.2f}x"
    if None in (la, ha, lb, hb) or (la == ha and lb == hb):  # one run each has no spread either
        better = (ma > mb) == higher_is_better
        side = good if better else bad
        return f"{head}, {side} (no spread measured, so noise cannot be ruled out)"
    if la <= hb and lb <= ha:
        return f"{head}, within noise ({spread} ranges overlap)"
    better = (ma > mb) == higher_is_better
    return f"{head}, {good if better else bad} (beyond {spread} spread)"


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
