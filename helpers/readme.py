"""The README's and the teacher's guide's result tables, generated from the recorded runs.

    python -m helpers.readme            # rewrite every recorded table of README.md and docs/teaching.md
    python -m helpers.readme --check    # only say whether they match results/recorded/ (a test does this)

A table is a block ``<!-- recorded {json} -->`` ... ``<!-- /recorded -->``: the JSON gives ``notebook``,
``columns`` and optionally ``headers``, ``device_type`` and ``match`` (fields every row must equal), and the
block's body is rebuilt from ``helpers.results.recorded_markdown()``. ``{"kind": "ladder_targets"}`` checks
the workbook's speed targets against each recorded ladder run (``helpers.ladder.verdict``);
``{"kind": "llamacpp_pairs"}`` gives each recorded llama.cpp comparison's verdict from its pairs
(``helpers.llamacpp.paired_ratio``).
"""

from __future__ import annotations

import argparse
import json
import re

from .ladder import TARGETS, verdict
from .llamacpp import GPU_TAG, gpu_target, paired_ratio, paired_sentence
from .results import ROOT, recorded, recorded_markdown, source_line

README = ROOT / "README.md"
DOCS = [README, ROOT / "docs" / "teaching.md"]  # the documents whose recorded tables are generated
_BLOCK = re.compile(r"(<!-- recorded (\{.*?\}) -->\n)(.*?)(<!-- /recorded -->)", re.S)


def render(text: str) -> str:
    """``text`` with every ``<!-- recorded {...} -->`` block's body rebuilt from the recorded runs."""

    def fill(m: re.Match) -> str:
        spec = json.loads(m.group(2))
        if spec.get("kind") == "ladder_targets":
            return f"{m.group(1)}{ladder_targets(spec.get('device_type'))}\n{m.group(4)}"
        if spec.get("kind") == "llamacpp_pairs":
            return f"{m.group(1)}{llamacpp_pairs()}\n{m.group(4)}"
        body = recorded_markdown(
            spec["notebook"],
            spec["columns"],
            spec.get("headers"),
            device_type=spec.get("device_type"),
            **spec.get("match", {}),
        )
        return f"{m.group(1)}{body}\n{m.group(4)}"

    return _BLOCK.sub(fill, text)


def ladder_targets(device_type: str | None = None) -> str:
    """The workbook's speed targets checked against each recorded ladder run."""
    parts = []
    for file, rows in recorded("ladder", device_type=device_type).items():
        lines = "\n".join(f"- {line}" for line in verdict(rows))
        parts.append(f"Targets ({TARGETS[rows[0]['device']]}), {source_line(rows, file)}:\n\n{lines}")
    return "\n\n".join(parts) or "No recorded ladder run yet: `python -m helpers.ladder --record`."


def llamacpp_pairs() -> str:
    """One line per recorded llama.cpp comparison: the verdict of its pairs (the fair comparison on a machine
    whose speed drifts), with the machine (a CPU with its instruction sets, or a GPU and its host CPU); on a GPU
    also issue #21's target."""
    lines = []
    for tag in ("llamacpp", GPU_TAG):
        for rows in recorded(tag).values():
            ratio = paired_ratio(rows)
            said = paired_sentence(ratio) if ratio else "no pairs in this run (recorded before they existed)"
            if tag == GPU_TAG:
                where = f"{rows[0]['device_name']} (host CPU: {rows[0]['cpu']})"
                said += f"; target: {gpu_target(ratio)}"
            else:
                where = rows[0]["cpu"]
            lines.append(f"- {where} ({rows[0]['date']}): {said}")
    return "\n".join(lines) or "No recorded llama.cpp run yet: `python -m helpers.llamacpp --record`."


def main(argv=None) -> int:
    """Rewrite (or check) the recorded tables of the README and the teacher's guide (``DOCS``)."""
    p = argparse.ArgumentParser(prog="python -m helpers.readme", description=main.__doc__)
    p.add_argument("--check", action="store_true", help="only say whether the documents are up to date")
    args = p.parse_args(argv)
    stale = []
    for doc in DOCS:
        if not doc.exists():
            continue
        old = doc.read_text()
        new = render(old)
        if old != new:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                doc.write_text(new)
    if args.check:
        if stale:
            print(
                f"{', '.join(map(str, stale))}: recorded tables differ from results/recorded/; "
                "run `python -m helpers.readme`."
            )
            return 1
        print("the README's and the teacher's guide's recorded tables match results/recorded/.")
        return 0
    print(f"rewrote the recorded tables of {', '.join(map(str, stale)) or 'nothing (all up to date)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
