"""Two checks that keep the notebooks honest, run by the test suite on every committed notebook.

1. **Numbers in prose are backed.** Every number a markdown cell states must also appear in the same
   notebook's code or printed outputs, or be marked as definitional. Prose asks and predicts; code
   prints the answer. A number that only the prose states was typed from some other run, and a
   re-run will show something else.
2. **Outputs are fresh.** ``helpers.execute`` stamps each code cell with the SHA-256 of the source it
   ran. A cell whose source changed since then shows outputs its current code did not print.

What counts as a number: digits, with a decimal part, thousands commas, an exponent or a unit
(``1.31x``, ``45%``, ``5,212``, ``2.5e-10``, ``14.0M``, ``186 us``), and dates (``2026-11-28``). Not
counted: single-digit integers without a unit (counts, ``batch 1``), digits inside words or names
(``fp32``, ``int8``, ``GPT-2``, ``06b``), headings' numbering, "notebook 04" / "section 3" / "Exercise 2",
inline code and code blocks, and link targets.

Marking a number as definitional (a size of GPT-2, a worked example, a quoted claim of the article the
workbook grew from) takes an HTML comment in the same cell, invisible when rendered:
``<!-- def: 124M, 4x, 10x, 50,257 -->`` (items separated by a comma and a space, or by spaces).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

_DATE = r"\d{4}-\d{2}-\d{2}"
_UNIT = r"(?:x|%|M|B|k|K|ms|us|µs|s|GB|MB|MiB|GiB|KiB|TB|GHz)?"
_NUMBER = re.compile(
    rf"(?<![\w\-./:#])(?P<num>{_DATE}|\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|\d+(?:\.\d+)?(?:e-?\d+)?)"
    rf"(?P<unit>{_UNIT})(?![\w])"
)
_MARK = re.compile(r"<!--\s*def:\s*(.*?)-->", re.S)
_REFERENCE = re.compile(r"(?:notebooks?|sections?|exercises?|steps?|parts?|issues?|#)\s*$", re.I)


@dataclass
class Unbacked:
    """A number stated in a markdown cell that no code or output of the notebook shows."""

    cell: int
    number: str
    context: str

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.number!r} in '...{self.context}...'"


def _normal(num: str) -> str:
    return num.replace(",", "")


def _strip_markup(text: str) -> str:
    """Markdown with code, link targets, HTML comments and headings' numbering blanked out."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "] ", text)  # link targets
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"https?://\S+", " ", text)
    text = re.sub(r"(?m)^(#+\s*)[\dA-Z]+[.:]?(?=\s)", r"\1", text)  # "## 3. Title"
    text = re.sub(r"(?m)^(\s*)\d+\.(?=\s)", r"\1", text)  # numbered lists
    return text


def numbers(markdown: str) -> list[tuple[str, str]]:
    """The numbers a markdown text states that need backing: (as written, context) pairs."""
    marked = set()
    for m in _MARK.finditer(markdown):
        marked |= {_normal(x.strip()) for x in re.split(r",\s+|\s+", m.group(1)) if x.strip()}
    text = _strip_markup(markdown)
    found = []
    for m in _NUMBER.finditer(text):
        num, unit = m.group("num"), m.group("unit")
        written = num + unit
        if not unit and re.fullmatch(r"\d", num):
            continue  # single digits: counts, batch sizes, k
        if _REFERENCE.search(text[max(0, m.start() - 12) : m.start()]):
            continue  # "notebook 04", "section 3"
        if _normal(written) in marked or _normal(num) in marked:
            continue
        context = text[max(0, m.start() - 40) : m.end() + 20].replace("\n", " ")
        found.append((written, context))
    return found


def _texts(cell: dict) -> list[str]:
    """A code cell's source and every text its outputs show."""
    out = ["".join(cell.get("source", ""))]
    for o in cell.get("outputs", []):
        if "text" in o:
            out.append("".join(o["text"]))
        for kind, value in o.get("data", {}).items():
            if kind.startswith("text/"):
                out.append("".join(value))
    return out


def unbacked(nb: dict) -> list[Unbacked]:
    """Numbers in ``nb``'s markdown that neither its code nor its outputs show (and that are not marked)."""
    backing = _normal("\n".join(t for c in nb["cells"] if c["cell_type"] == "code" for t in _texts(c)))
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for written, context in numbers("".join(cell["source"])):
            m = _NUMBER.fullmatch(written)
            num = _normal(m.group("num")) if m else _normal(written)
            if not re.search(rf"(?<![\d.]){re.escape(num)}(?!\d)", backing):
                problems.append(Unbacked(i, written, context))
    return problems


def counts(nb: dict) -> dict:
    """How many numbers the prose states (checked against code and outputs) and how many are marked definitional."""
    checked = marked = 0
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            text = "".join(cell["source"])
            checked += len(numbers(text))
            marked += sum(len(re.split(r",\s+|\s+", m.group(1).strip())) for m in _MARK.finditer(text))
    return {"numbers checked": checked, "marked definitional": marked}


def source_hash(source: str | list[str]) -> str:
    """SHA-256 of a cell's source, as ``helpers.execute`` stamps it."""
    text = "".join(source) if isinstance(source, list) else source
    return hashlib.sha256(text.encode()).hexdigest()


def stamp(nb: dict) -> None:
    """Record in each code cell's metadata the hash of the source that just ran (``helpers.execute`` calls it)."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell.setdefault("metadata", {})["workbook"] = {"source_sha256": source_hash(cell["source"])}


def stale(nb: dict) -> list[int]:
    """Indices of code cells whose source is not the one their outputs came from (or that were never stamped)."""
    bad = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        stamped = cell.get("metadata", {}).get("workbook", {}).get("source_sha256")
        if stamped != source_hash(cell["source"]):
            bad.append(i)
    return bad


def missing_plots(nb: dict) -> list[int]:
    """Indices of code cells that always draw a figure (a ``plt.show()`` at the top level of the cell) but hold
    no image: executed with a non-interactive matplotlib backend (``MPLBACKEND=Agg``), say, which drops them."""
    bad = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        draws = any(line.startswith("plt.show()") for line in lines)
        if draws and not any("image/png" in out.get("data", {}) for out in cell.get("outputs", [])):
            bad.append(i)
    return bad


def check(path: Path | str) -> list[str]:
    """Every problem of the checks in one notebook file (numbers, freshness, plots), as sentences that say what
    to do."""
    nb = json.loads(Path(path).read_text())
    name = Path(path).name
    problems = [
        f"{name} {u}: print it from code, or mark it with <!-- def: {u.number} --> if it is definitional"
        for u in unbacked(nb)
    ]
    cells = stale(nb)
    if cells:
        problems.append(
            f"{name}: code cells {cells} changed since their outputs were made: "
            f"re-execute with `python -m helpers.execute notebooks/{name}`"
        )
    plots = missing_plots(nb)
    if plots:
        problems.append(
            f"{name}: code cells {plots} draw a figure but hold none: re-execute with "
            f"`python -m helpers.execute notebooks/{name}` (it leaves MPLBACKEND unset, so that the plots are kept)"
        )
    return problems


def main(argv=None) -> int:
    """``python -m helpers.truth [--count] [NOTEBOOK ...]``: run both checks (all notebooks by default).

    ``--count`` also prints how many numbers each notebook's prose states and how many are marked definitional.
    """
    import sys

    paths = (argv if argv is not None else sys.argv[1:]) or sorted(
        (Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")
    )
    if "--count" in paths:
        paths = [p for p in paths if p != "--count"] or sorted(
            (Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")
        )
        for path in paths:
            print(Path(path).name, counts(json.loads(Path(path).read_text())))
    problems = [p for path in paths for p in check(path)]
    print("\n".join(problems) or f"{len(paths)} notebooks: every number in the prose is backed; outputs are fresh.")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
