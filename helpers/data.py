"""The corpus: the Python standard library's own source, split deterministically by file.

Every Python ships its standard library as ``.py`` files, so the corpus needs no download and
nothing is copied into the repository. A file's split depends only on its path relative to the
library root (a hash of it), so the split is the same on every machine and every Python version:
a file that is held out on Python 3.11 is held out on 3.12 too.

- ``files(split)`` lists the files of a split; ``text(split)`` joins them.
- ``eval_tokens(tokenizer, budget)`` gives the held-out tokens that perplexity is measured on.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

SPLITS = ("train", "val", "test")
# bucket = first 4 bytes of sha256(relative path) mod 100; 0-89 train, 90-94 val, 95-99 test
_BOUNDS = {"train": (0, 90), "val": (90, 95), "test": (95, 100)}
SPLIT_RULE = "sha256(relative path) -> first 4 bytes as an integer mod 100: 0-89 train, 90-94 val, 95-99 test"
FILE_SEPARATOR = "\n<|endoftext|>\n"
MAX_FILE_BYTES = 400_000  # a handful of generated tables are larger; they teach the model nothing


def stdlib_root() -> Path:
    """The folder of the running Python's standard library source."""
    return Path(sysconfig.get_paths()["stdlib"])


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def split_of(relpath: str) -> str:
    """The split (train / val / test) a file belongs to, from its path relative to the library root."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:4], "big") % 100
    for split, (lo, hi) in _BOUNDS.items():
        if lo <= bucket < hi:
            return split
    raise AssertionError(bucket)


def files(split: str, root: Path | str | None = None) -> list[Path]:
    """The ``.py`` files of one split, sorted by relative path (``site-packages`` excluded)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    root = Path(root) if root else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"No standard library source at {root}. Pass root= to a folder of .py files.")
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("site-packages/") or "/site-packages/" in rel:
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        if split_of(rel) == split:
            out.append(path)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def read(path: Path) -> str:
    """A source file's text (undecodable bytes replaced, which a few test files need)."""
    return path.read_bytes().decode("utf-8", errors="replace")


def text(split: str, root: Path | str | None = None, max_chars: int | None = None) -> str:
    """The files of a split joined by ``FILE_SEPARATOR``, optionally cut at ``max_chars``."""
    parts, size = [], -len(FILE_SEPARATOR)
    for path in files(split, root):
        parts.append(read(path))
        size += len(FILE_SEPARATOR) + len(parts[-1])
        if max_chars is not None and size >= max_chars:
            break
    joined = FILE_SEPARATOR.join(parts)
    return joined[:max_chars] if max_chars is not None else joined


def eval_tokens(tokenizer, budget: int = 50_000, split: str = "val", root: Path | str | None = None):
    """The first ``budget`` tokens of a held-out split, as a 1-D LongTensor.

    Files are taken in their fixed order, so the same budget gives the same tokens on every run:
    perplexities measured with it are comparable across techniques.
    """
    import torch

    ids: list[int] = []
    for path in files(split, root):
        ids.extend(tokenizer(read(path) + FILE_SEPARATOR)["input_ids"])
        if len(ids) >= budget:
            break
    if len(ids) < budget:
        raise ValueError(f"The {split} split has only {len(ids)} tokens; ask for a smaller budget.")
    return torch.tensor(ids[:budget], dtype=torch.long)


def summary(root: Path | str | None = None) -> dict:
    """Files and bytes per split, for the model card and the notebooks."""
    out = {}
    for split in SPLITS:
        fs = files(split, root)
        out[split] = {"files": len(fs), "bytes": sum(f.stat().st_size for f in fs)}
    return out
