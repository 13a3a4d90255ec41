"""What an optional part of the set-up costs: a package's wheel, its size on disk and its install time, measured.

    python -m helpers.setup_cost triton --record

downloads the package's wheel for this machine (without its dependencies, bypassing pip's cache, so the
time is the network's), then installs that wheel into a temporary folder, timing both. With ``--record`` the
row goes to ``results/recorded/setup--<machine>.jsonl`` (with the machine, versions and date), which the
README renders. The download time depends on the network of the day; the sizes and the install time do not.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _pip(*args: str) -> float:
    """Run pip with ``args``; return the seconds it took. A failure raises with pip's own message."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"pip {args[0]} failed:\n{done.stderr.strip()[-800:]}")
    return time.perf_counter() - t0


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def install_cost(wheel: Path) -> dict:
    """Install ``wheel`` (no dependencies, no byte-compiling) into a temporary folder: seconds and bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        seconds = _pip("install", "--no-deps", "--no-compile", "--no-cache-dir", "-q", "--target", tmp, str(wheel))
        return {"install_s": seconds, "installed_MB": folder_bytes(Path(tmp)) / 1e6}


def measure(requirement: str) -> dict:
    """Download the wheel of ``requirement`` for this machine and install it: what it adds to the set-up."""
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--no-deps", "--no-cache-dir", "--only-binary=:all:", "-q"]
        download_s = _pip("download", *flags, "-d", tmp, requirement)
        wheel = next(Path(tmp).glob("*.whl"))
        name, version = wheel.name.split("-")[:2]
        return {
            "label": f"{name} {version}",
            "package": name,
            "version": version,
            "wheel_MB": wheel.stat().st_size / 1e6,
            "download_s": download_s,
            **install_cost(wheel),
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requirement", help="a pip requirement, e.g. triton or 'triton>=3.2,<4'")
    parser.add_argument("--record", action="store_true", help="keep the row in results/recorded/ (committed)")
    args = parser.parse_args(argv)
    from . import results

    if args.record:
        results.start_recording("setup_cost", argv)
    row = measure(args.requirement)
    print(
        f"{row['label']}: wheel {row['wheel_MB']:,.0f} MB, downloaded in {row['download_s']:.1f} s; "
        f"installed ({row['installed_MB']:,.0f} MB on disk) in {row['install_s']:.1f} s"
    )
    results.record(row, notebook="setup", technique="set-up cost")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
