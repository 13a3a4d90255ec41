"""Colab: the repository's address in one place, every notebook's badge and set-up cell made from it.

A notebook opened on Colab has no ``helpers`` and no ``data``: its first code cell clones this repository
and makes ``helpers`` importable. That cell and the "Open in Colab" badge both name the repository, so
both are written from ``REPO`` here:

    python -m helpers.colab set-repo OWNER/NAME   # after publishing (or forking) the repository on GitHub
    python -m helpers.colab check                 # do all badges and set-up cells agree with REPO?

The set-up cell installs only what Colab lacks (it checks before it installs) and prints how long it took.
``WORKBOOK_CLONE_URL`` makes it clone from elsewhere (a ``file://`` path in the tests, a mirror in a room
without GitHub).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = "faster-gpt2/faster-gpt2"  # OWNER/NAME on GitHub; `python -m helpers.colab set-repo` rewrites it
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
FIRST_LINE = "# Set-up: on Colab, fetch the workbook and make its helpers importable; anywhere else this does nothing."

SETUP_CELL = """{first}
import sys

if "google.colab" in sys.modules:
    import importlib.metadata as meta
    import os
    import subprocess
    import time

    t0 = time.time()
    url = os.environ.get("WORKBOOK_CLONE_URL", "https://github.com/{repo}")
    if not os.path.isdir("faster-gpt2"):
        subprocess.run(["git", "clone", "--depth", "1", "-q", url, "faster-gpt2"], check=True)
    # Colab has torch, matplotlib, tqdm, psutil, safetensors and ipywidgets; add what is missing or too old.
    need = []
    for package, major in [("transformers", 5), ("torchao", 0)]:
        try:
            if int(meta.version(package).split(".")[0]) < major:
                need.append(f"{{package}}>={{major}}")
        except meta.PackageNotFoundError:
            need.append(package)
    if need:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *need], check=True)
    os.chdir("faster-gpt2/notebooks")
    sys.path.insert(0, os.path.abspath(".."))
    print(f"set-up done in {{time.time() - t0:.0f}} s (installed: {{', '.join(need) or 'nothing'}})")
"""


def setup_cell(repo: str = REPO) -> str:
    """The set-up cell's source for ``repo``."""
    return SETUP_CELL.format(first=FIRST_LINE, repo=repo).rstrip("\n")


def badge(notebook: str, repo: str = REPO) -> str:
    """The "Open in Colab" badge of ``notebook`` (a file name under notebooks/)."""
    return (
        "[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{repo}/blob/main/notebooks/{notebook})"
    )


_BADGE = re.compile(r"\[!\[Open in Colab\]\([^)]*\)\]\([^)]*\)")


def _check_repo(repo: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+", repo):
        raise ValueError(f"{repo!r} is not OWNER/NAME of a GitHub repository (for example 'me/faster-gpt2').")


def problems(repo: str = REPO, folder: Path = NOTEBOOKS) -> list[str]:
    """What disagrees with ``repo``: badges and set-up cells of every notebook in ``folder``."""
    found = []
    for path in sorted(folder.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        first_md = "".join(cells[0]["source"]) if cells and cells[0]["cell_type"] == "markdown" else ""
        badges = _BADGE.findall(first_md)
        if badges != [badge(path.name, repo)]:
            found.append(f"{path.name}: its first cell should hold one badge, {badge(path.name, repo)}")
        code = next((c for c in cells if c["cell_type"] == "code"), None)
        if code is None or "".join(code["source"]) != setup_cell(repo):
            found.append(f"{path.name}: its first code cell is not the set-up cell for {repo}")
    return found


def set_repo(repo: str, folder: Path = NOTEBOOKS, module: Path | None = Path(__file__)) -> int:
    """Rewrite every notebook's badge and set-up cell (and ``REPO`` in this file) for ``repo``; return files changed."""
    _check_repo(repo)
    changed = 0
    for path in sorted(folder.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        cells = nb["cells"]
        before = json.dumps(cells)
        if cells and cells[0]["cell_type"] == "markdown":
            text = "".join(cells[0]["source"])
            if _BADGE.search(text):
                text = _BADGE.sub(lambda _m, name=path.name: badge(name, repo), text, count=1)
            else:
                lines = text.split("\n", 1)
                text = lines[0] + "\n\n" + badge(path.name, repo) + ("\n" + lines[1] if len(lines) > 1 else "")
            cells[0]["source"] = text.splitlines(keepends=True)
        code = next((c for c in cells if c["cell_type"] == "code"), None)
        if code is not None and "".join(code["source"]).startswith("# Set-up: on Colab"):
            code["source"] = setup_cell(repo).splitlines(keepends=True)
            # the set-up cell does nothing off Colab and prints nothing there: its stamp stays valid
            from .truth import source_hash

            code.setdefault("metadata", {})["workbook"] = {"source_sha256": source_hash(code["source"])}
        if json.dumps(cells) != before:
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed += 1
    if module is not None:
        text = module.read_text()
        module.write_text(re.sub(r'^REPO = "[^"]*"', f'REPO = "{repo}"', text, count=1, flags=re.M))
    return changed


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["set-repo"] and len(argv) == 2:
        n = set_repo(argv[1])
        print(f"{n} notebooks now point at github.com/{argv[1]}; commit them and helpers/colab.py.")
        return 0
    if argv == ["check"]:
        found = problems()
        print("\n".join(found) or f"every badge and set-up cell points at github.com/{REPO}")
        return 1 if found else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
