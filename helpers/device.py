"""Which device to compute on, what the hardware is, and how fast its memory is.

- ``pick()`` chooses cuda, then mps, then cpu; ``WORKBOOK_DEVICE`` overrides it.
- ``describe()`` names the device, versions, threads and memory, for every notebook's banner.
- ``bandwidth()`` measures memory bandwidth with a large copy (cached per device), the
  number that bounds how fast a model can decode one token at a time.
- ``matmul_flops()`` measures matrix-multiply throughput (cached per device and dtype), the
  number that bounds prefill and large batches. Together they are the roofline's two limits.
- ``has_cuda()`` / ``gpu_only()`` let GPU-only steps explain themselves and skip cleanly on a CPU.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from . import timing

VALID = ("cpu", "cuda", "mps")


def pick(prefer: str | None = None) -> torch.device:
    """The device the workbook computes on.

    ``prefer`` (or the ``WORKBOOK_DEVICE`` environment variable) may name one of
    ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; otherwise the best available is used.
    """
    want = (prefer or os.environ.get("WORKBOOK_DEVICE") or "").strip().lower()
    if want:
        kind = want.split(":")[0]
        if kind not in VALID:
            raise ValueError(f"Unknown device {want!r}: use one of {', '.join(VALID)} (or cuda:N).")
        if kind == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"Device {want!r} was asked for, but torch sees no CUDA GPU here. Use 'cpu'.")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"Device {want!r} was asked for, but MPS is not available here. Use 'cpu'.")
        return torch.device(want)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def has_cuda() -> bool:
    return torch.cuda.is_available()


def gpu_only(step: str, need: str = "a CUDA GPU") -> bool:
    """Return True if a GPU-only step can run; otherwise print why it is skipped and return False.

    Use it as ``if gpu_only("CUDA graphs"): ...`` so that the notebook still runs on a CPU.
    """
    if torch.cuda.is_available():
        return True
    print(
        f"Skipped on this machine: {step} needs {need}, and torch sees none here. "
        "The cell runs as written on a CUDA GPU (e.g. Colab with a GPU runtime)."
    )
    return False


def require_cuda(step: str) -> None:
    """Raise a clear error when a GPU-only function is called without a GPU."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{step} needs a CUDA GPU, and torch sees none here. "
            "Run it on a GPU machine, or use the CPU path the notebook shows."
        )


synchronize = timing.synchronize  # wait for queued GPU work (helpers.timing), as device.synchronize too


def name(device: torch.device | str | None = None) -> str:
    """A human name for the device: the GPU's name, or the CPU model and thread count."""
    device = torch.device(device or pick())
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple {platform.machine()} (MPS)"
    return f"{_cpu_model()} ({torch.get_num_threads()} threads)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


# CPU features that decide decoding speed on a CPU more than the core count does (Linux /proc/cpuinfo names).
_ISA = [
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("avx512_fp16", "AVX-512 FP16"),
    ("amx_tile", "AMX"),
    ("asimd", "NEON"),
    ("sve", "SVE"),
]


def cpu_features(flags: set[str] | None = None) -> list[str]:
    """The instruction sets of this CPU that matter for inference: AVX2, AVX-512, VNNI, BF16/FP16, AMX; NEON/SVE.

    Without hardware BF16/FP16 arithmetic (no AVX-512 BF16 / FP16, no AMX), bf16 and fp16 run emulated and slow.
    """
    if flags is None:
        flags = set()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
        except OSError:
            pass
        if not flags and platform.system() == "Darwin" and platform.machine() == "arm64":
            return ["NEON (Apple silicon)"]
    return [label for flag, label in _ISA if flag in flags]


def cpu_summary() -> str:
    """The CPU in one line: model, threads torch uses, and its instruction sets, e.g. for a recorded run."""
    feats = cpu_features()
    return f"{_cpu_model()}, {torch.get_num_threads()} threads, {', '.join(feats) if feats else 'no AVX2'}"


def describe(device: torch.device | str | None = None) -> dict:
    """Device, versions, threads and memory, as printed in every notebook's set-up cell."""
    import psutil
    import transformers

    device = torch.device(device or pick())
    info = {
        "device": f"{device.type}: {name(device)}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu threads": torch.get_num_threads(),
        "cpu features": ", ".join(cpu_features()) or "none of AVX2, AVX-512, AMX, NEON",
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["GPU memory"] = f"{props.total_memory / 2**30:.1f} GiB"
        info["CUDA"] = torch.version.cuda
    return info


def _cache_file() -> Path:
    root = Path(os.environ.get("WORKBOOK_CACHE", Path.home() / ".cache" / "faster-gpt2"))
    return root / "measurements.json"


def _key(device: torch.device) -> str:
    """A cache key for measurements: the device's name, and on a CPU its instruction sets (same names, other chips)."""
    extra = f" [{', '.join(cpu_features())}]" if device.type == "cpu" else ""
    return f"{device.type}:{name(device)}{extra}"


def _cached(key: str, measure, refresh: bool) -> float:
    """Read ``key`` from the measurement cache, or run ``measure()`` and store its result."""
    cache = _cache_file()
    stored = {}
    if cache.exists():
        try:
            stored = json.loads(cache.read_text())
        except (OSError, ValueError):
            stored = {}
    if key in stored and not refresh:
        return float(stored[key])
    stored[key] = value = float(measure())
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(stored, indent=1))
    except OSError:
        pass
    return value


def _median_time(fn, device: torch.device, repeats: int) -> float:
    """The workbook's one timing discipline (``helpers.timing.time_fn``)."""
    return timing.time_fn(fn, warmup=2, repeats=repeats, device=device)["median"]


def bandwidth(
    device: torch.device | str | None = None, *, mib: int | None = None, repeats: int = 10, refresh: bool = False
) -> float:
    """Measured memory bandwidth of ``device`` in bytes per second (read + write of a large copy).

    A copy of a buffer much larger than the caches reads and writes every byte once, so
    (2 x size) / time is what the memory system sustains. It is measured once per device: the median
    of ``repeats`` runs after a warm-up is cached in ``~/.cache/faster-gpt2/measurements.json``
    (``WORKBOOK_CACHE`` moves the folder); ``refresh=True`` measures again.
    """
    device = torch.device(device or pick())

    def measure() -> float:
        n = (mib or (1024 if device.type == "cuda" else 256)) * 2**20 // 4
        src = torch.randn(n, device=device)
        dst = torch.empty_like(src)
        return 2 * src.numel() * src.element_size() / _median_time(lambda: dst.copy_(src), device, repeats)

    return _cached(f"bandwidth {_key(device)}", measure, refresh)


def matmul_flops(
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    n: int | None = None,
    repeats: int = 5,
    refresh: bool = False,
) -> float:
    """Measured throughput of an n x n x n matrix multiply on ``device`` in ``dtype``, in FLOP/s (cached).

    Random inputs (zeros can run faster than real data), median of ``repeats`` after a warm-up.
    On CUDA, fp32 matmuls use TF32 tensor cores only if ``torch.backends.cuda.matmul.allow_tf32`` is on;
    the measurement uses whatever setting is in force, like the model would.
    """
    device = torch.device(device or pick())
    n = n or (8192 if device.type == "cuda" else 1024)

    def measure() -> float:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        return 2 * n**3 / _median_time(lambda: a @ b, device, repeats)

    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    key = f"matmul {_key(device)} {str(dtype).replace('torch.', '')}{' tf32' if tf32 else ''} n={n}"
    return _cached(key, measure, refresh)
