"""Execute notebooks the one way whose outputs may be committed: ``python -m helpers.execute NOTEBOOK ...``.

It runs each notebook top to bottom in a fresh kernel (nbclient), then
- replaces each progress bar's saved text by its final state (a widget's saved text is its first
  state, "0%| | 0/25", which a static view such as GitHub would show although the loop finished);
- keeps only the final state of lines that a progress bar rewrote with carriage returns;
- stamps every code cell with the hash of the source that ran (``helpers.truth.stamp``), and the
  notebook with the device, CPU, mode, date and run time, so the tests can tell stale outputs;
- with ``--record``, sets ``WORKBOOK_RECORD=1`` so the notebook's ``results.record()`` rows are kept
  under ``results/recorded/`` (committed) for other notebooks and the README to render.

Full mode is the default (what learners get); ``--quick`` runs the test suite's sizes.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
import time
from pathlib import Path

from . import truth


def _widget_text(model_id: str, state: dict) -> str | None:
    """The final text of a tqdm progress-bar widget, rebuilt from the stored widget state."""
    box = state.get(model_id, {}).get("state", {})
    parts = []
    for child in box.get("children", []):
        child_state = state.get(child.replace("IPY_MODEL_", ""), {})
        kind, s = child_state.get("model_name", ""), child_state.get("state", {})
        if kind == "HTMLModel":
            parts.append(html.unescape(re.sub(r"<[^>]+>", "", s.get("value", ""))).replace("\u2007", " "))
        elif kind == "FloatProgressModel":
            total = s.get("max") or 0
            done = s.get("value") or 0
            frac = done / total if total else 0
            parts.append(f"|{'█' * round(10 * frac):<10}|")  # tqdm's left text already holds the percentage
    return "".join(parts) if parts else None


def _final_line(text: str) -> str:
    """Each line as a terminal would show it after carriage returns: only what follows the last one."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def tidy(nb) -> None:
    """Progress bars' final states in the saved outputs (see the module docstring)."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and "\r" in out.get("text", ""):
                out["text"] = _final_line(out["text"])
            view = out.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if view:
                text = _widget_text(view.get("model_id", ""), state)
                if text:
                    out["data"]["text/plain"] = text


def run(path: Path, *, quick: bool, record: bool, timeout: int) -> float:
    """Execute one notebook in place; return its run time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    from . import device

    env = {
        "WORKBOOK_QUICK": "1" if quick else "0",
        "WORKBOOK_RECORD": "1" if record else "0",
        "WORKBOOK_COMMAND": f"python -m helpers.execute{' --quick' if quick else ''} notebooks/{path.name}",
        "WORKBOOK_MODEL": os.environ.get("WORKBOOK_MODEL", "pocket"),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    }
    os.environ.update(env)  # the kernel inherits this process's environment
    os.environ.pop("MPLBACKEND", None)  # a non-interactive backend (Agg) would drop the plots: keep the kernel's own
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.store_widget_state = True
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    tidy(nb)
    truth.stamp(nb)
    dev = device.pick()
    nb.metadata["workbook"] = {
        "executed": time.strftime("%Y-%m-%d"),
        "device": device.name(dev),
        "cpu": device.cpu_summary(),
        "mode": "quick" if quick else "full",
        "seconds": round(seconds),
        "model": env["WORKBOOK_MODEL"],
    }
    if record:
        record_time(path.name, seconds, quick)
        refresh_run_times(nb, path.name)
    nbformat.write(nb, path)
    return seconds


def refresh_run_times(nb, name: str) -> None:
    """Give the cell that shows notebook ``name``'s run times (``results.show_run_times``) the times just recorded.

    The cell ran before this run's time was known; its output is replaced by what its code prints now, so the
    committed notebook shows its own run among the recorded ones.
    """
    import nbformat

    from . import results

    text = results.run_times_markdown(name)
    for cell in nb.cells:
        if cell.cell_type == "code" and "results.show_run_times(" in cell.source:
            data = {"text/markdown": text, "text/plain": "<IPython.core.display.Markdown object>"}
            cell.outputs = [nbformat.v4.new_output("display_data", data=data)]


def record_time(name: str, seconds: float, quick: bool) -> None:
    """Keep a notebook's run time in ``results/recorded/runs--<device>.jsonl`` (one row per notebook and mode).

    The README's notebook map and the teacher's guide show these times; a new run replaces the old row.
    """
    import json

    from . import results

    ctx = results.run_context()
    file = results.RECORDED / f"runs--{results.slug(ctx['device_name'])}.jsonl"
    rows = results.read_jsonl(file) if file.exists() else []  # the log's reader: a bad line is named, not fatal
    rows = [r for r in rows if not (r["file"] == name and r["quick"] == quick)]
    row = {**ctx, "notebook": "runs", "file": name, "quick": quick, "seconds": round(seconds), "minutes": seconds / 60}
    rows.append(row)
    rows.sort(key=lambda r: (r["quick"], r["file"]))
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))  # rewritten whole: one row per notebook and mode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.execute", description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--quick", action="store_true", help="the test suite's sizes (WORKBOOK_QUICK=1)")
    p.add_argument("--record", action="store_true", help="keep results.record() rows in results/recorded/")
    p.add_argument("--timeout", type=int, default=1800, help="seconds one cell may take")
    args = p.parse_args(argv)
    for path in args.notebooks:
        if not path.exists():
            print(f"no such notebook: {path}", file=sys.stderr)
            return 2
        print(f"executing {path} ({'quick' if args.quick else 'full'} mode) ...", flush=True)
        seconds = run(path, quick=args.quick, record=args.record, timeout=args.timeout)
        print(f"  done in {seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
