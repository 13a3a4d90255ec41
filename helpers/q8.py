"""q8_0 weights on a CPU, as llama.cpp stores them, computed by the workbook's own integer kernel.

Notebook 03c builds the format and its arithmetic from scratch; this module is that lesson as code:

- ``quantize_q8_0`` / ``dequantize_q8_0``: blocks of 32 weights along the input, one fp16 scale each
  (absmax / 127), the input padded with zeros to a multiple of 32: 1.0625 bytes per weight.
- ``interleave``: four output rows' blocks side by side, the layout the kernel streams.
- ``matmul_reference``: the kernel's arithmetic in PyTorch (activations quantized per block of 32, integer dot
  products, both scales applied per block): slow, exact, what the tests hold the kernel to.
- ``kernel``: builds ``q8_kernel.cpp`` for this CPU once (``torch.utils.cpp_extension``: a C++ compiler and
  ninja, ``-march=native``; cached, so later loads take a moment) and registers ``torch.ops.faster_gpt2.q8_matmul``
  (an operator a compiled step calls as one) and ``q8_isa``. ``available()`` says whether it can, and why not.
- ``Q8Linear``: a linear layer with q8_0 weights that calls the kernel, for swapping into a model;
  ``q8_0_model``: a copy of a GPT-2 with every linear layer swapped (for perplexity, notebook 03c).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 32  # values per block, as llama.cpp's q8_0
ROWS = 4  # output rows the kernel computes together (the interleave)
SOURCE = Path(__file__).with_name("q8_kernel.cpp")  # the matrix product
STEP_SOURCE = Path(__file__).with_name("q8_step.cpp")  # GPT-2's whole decode step around it (helpers.fastgen.cpu_step)
CACHE = Path(os.environ.get("WORKBOOK_CACHE", Path.home() / ".cache" / "faster-gpt2")) / "q8_kernel"
FLAGS = ["-O3", "-march=native"]  # this CPU's instruction sets: the build is for this machine only
# Builds of the kernel's other paths on an x86 CPU that has more, so that the tests check each path's arithmetic
# here (their speed belongs to CPUs that have only those instructions): AVX2 without AVX-512, and plain C++;
# and this CPU's path without software prefetch (the weights asked for only by the hardware), to time the hint.
VARIANTS = {"avx2": ["-mno-avx512f"], "portable": ["-mno-avx512f", "-mno-avx2"], "no_prefetch": ["-DQ8_PF=0"]}

_ext = None  # the loaded extension
_build_s: float | None = None  # seconds the kernel() call that loaded it took
_FIRST_BUILDS = itertools.count()  # numbers each timed first build in this process (its own operator namespace)
_compiled = False  # whether that call compiled it (True) or loaded an earlier build from the cache (False)


# --- the format -------------------------------------------------------------------------------------
def quantize_q8_0(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes (out, in rounded up to 32) and fp16 scales (out, blocks) of a 2-D weight (out, in)."""
    if w.dim() != 2:
        raise ValueError(f"quantize_q8_0 expects a 2-D weight (out, in), got shape {tuple(w.shape)}.")
    n, k = w.shape
    kp = -(-k // BLOCK) * BLOCK
    blocks = F.pad(w.detach().float(), (0, kp - k)).view(n, kp // BLOCK, BLOCK)  # (out, B, 32)
    scale = (blocks.abs().amax(-1) / 127).half()  # (out, B): stored in fp16, as q8_0
    s = scale.float().unsqueeze(-1)  # (out, B, 1)
    codes = torch.where(s > 0, blocks / s.clamp(min=torch.finfo(torch.float32).tiny), 0).round().clamp(-127, 127)
    return codes.to(torch.int8).view(n, kp), scale  # (out, Kp), (out, B)


def dequantize_q8_0(codes: torch.Tensor, scale: torch.Tensor, in_features: int | None = None) -> torch.Tensor:
    """Float weights (out, in) back from codes (out, Kp) and scales (out, B); padding columns dropped."""
    n, kp = codes.shape
    w = (codes.view(n, kp // BLOCK, BLOCK).float() * scale.float().unsqueeze(-1)).view(n, kp)  # (out, Kp)
    return w[:, : in_features or kp]


def interleave(codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (N, Kp) and scales (N, B) in the kernel's layout: rows padded to a multiple of 4 with zeros, then
    each group of 4 rows stored block by block, (N/4, B, 4, 32) and (N/4, B, 4), seen as 2-D tensors."""
    n, kp = codes.shape
    b, npad = kp // BLOCK, -(-n // ROWS) * ROWS
    codes = F.pad(codes, (0, 0, 0, npad - n))
    scale = F.pad(scale, (0, 0, 0, npad - n))
    codes = codes.view(npad // ROWS, ROWS, b, BLOCK).transpose(1, 2).contiguous().view(npad, kp)
    scale = scale.view(npad // ROWS, ROWS, b).transpose(1, 2).contiguous().view(npad, b)
    return codes, scale


def quantize_activations(x: torch.Tensor, kp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x`` (M, K) as int8 blocks of 32 (M, Kp) with a float scale each (M, B), zero-padded to ``kp``."""
    m, k = x.shape
    blocks = F.pad(x.float(), (0, kp - k)).view(m, kp // BLOCK, BLOCK)  # (M, B, 32)
    d = blocks.abs().amax(-1) / 127  # (M, B)
    inv = torch.where(d > 0, 1 / d.clamp(min=torch.finfo(torch.float32).tiny), 0).unsqueeze(-1)  # (M, B, 1)
    return (blocks * inv).round().to(torch.int8).view(m, kp), d


def matmul_reference(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What the kernel computes, in PyTorch: ``x`` (M, K) times q8_0 weights (N, Kp)/(N, B) -> (M, N).

    Each block's dot product is exact in integers; the float work is one multiply-add per block."""
    n, kp = codes.shape
    xq, xs = quantize_activations(x, kp)  # (M, Kp) int8, (M, B)
    xb = xq.view(-1, kp // BLOCK, BLOCK).to(torch.int32)  # (M, B, 32)
    wb = codes.view(n, kp // BLOCK, BLOCK).to(torch.int32)  # (N, B, 32)
    sums = torch.einsum("mbk,nbk->mnb", xb, wb)  # (M, N, B): integer sums of 32 products (exact)
    return (sums.float() * xs[:, None, :] * scale.float()[None, :, :]).sum(-1)  # (M, N)


# --- the kernel -------------------------------------------------------------------------------------
def available() -> tuple[bool, str]:
    """Whether ``kernel()`` can build here, and why not (a sentence that says what to do)."""
    if _ext is not None:
        return True, "built"
    if sys.platform == "win32":
        return False, "the kernel's build flags are for gcc or clang (Linux, macOS): use WSL on Windows."
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return False, f"no C++ compiler ({cxx}) was found: install one (e.g. `apt install g++` or Xcode's tools)."
    from torch.utils.cpp_extension import is_ninja_available

    _ninja_on_path()
    if not is_ninja_available():
        return False, "ninja is missing: `pip install ninja` (torch builds C++ extensions with it)."
    return True, "a C++ compiler and ninja are here"


def _ninja_on_path() -> None:
    """pip's ninja lives beside this Python; a kernel started without the virtual environment activated (a
    Jupyter kernel, ``.venv/bin/python``) would not find it on PATH, so put that folder on PATH."""
    here = str(Path(sys.executable).parent)
    if (Path(here) / "ninja").exists() and here not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


def _flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags: this CPU's instruction sets (capped by ``WORKBOOK_Q8_ISA``), and OpenMP threads
    where the compiler has them."""
    openmp = sys.platform.startswith("linux")  # Apple's clang has no OpenMP: there the kernel runs on one thread
    return FLAGS + isa_cap() + (["-fopenmp"] if openmp else []), (["-fopenmp"] if openmp else [])


def isa_cap() -> list[str]:
    """Flags that cap this process's builds at fewer instruction sets than the CPU has: ``WORKBOOK_Q8_ISA=avx2``
    (or ``portable``) builds the default kernel as that variant, so that ``python -m helpers.llamacpp --isa avx2``
    can time a CPU without AVX-512 on one that has it."""
    cap = os.environ.get("WORKBOOK_Q8_ISA", "")
    if cap and cap not in ("avx2", "portable"):
        raise ValueError(f"WORKBOOK_Q8_ISA takes avx2 or portable (or nothing: this CPU's own), got {cap!r}.")
    return VARIANTS[cap] if cap else []


def _load(variant: str | None, verbose: bool, root: Path | None = None, tag: str = ""):
    """Build (or load from the cache) one build of the kernel; returns (its operators, seconds, compiled now).

    ``variant`` None is this CPU's own build, whose ``q8_matmul`` is ``torch.ops.faster_gpt2.q8_matmul``;
    another variant, or a ``tag`` (a build timed as a first one), gets an operator namespace of its own. ``root``
    (default ``CACHE``) holds the build folder."""
    from torch.utils.cpp_extension import load  # not load_inline, which adds torch/extension.h (slow to compile)

    cflags, ldflags = _flags()
    namespace = "faster_gpt2"
    if variant is not None or tag:
        namespace = f"faster_gpt2_{variant or 'native'}{tag}"
        cflags = cflags + VARIANTS.get(variant, []) + [f"-DQ8_NS={namespace}", "-DQ8_DECLARE"]
    sources = [SOURCE, STEP_SOURCE]
    key = "|".join([*(f.read_text() for f in sources), *cflags, torch.__version__, platform.machine(), platform.node()])
    name = f"{namespace}_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    folder = (root or CACHE) / name
    folder.mkdir(parents=True, exist_ok=True)
    library = folder / f"{name}.so"
    before = library.stat().st_mtime_ns if library.exists() else None
    start = time.perf_counter()
    try:
        load(
            name,
            sources=[str(f) for f in sources],
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            build_directory=str(folder),
            verbose=verbose,
            is_python_module=False,  # a library of operators, loaded into torch.ops
        )
    except Exception as e:  # a compiler error: say where to look
        raise RuntimeError(
            f"Building the q8_0 kernel failed ({type(e).__name__}); run kernel(verbose=True) to see "
            f"the compiler's output. Build folder: {folder}"
        ) from e
    ops = getattr(torch.ops, namespace)
    seconds = time.perf_counter() - start
    compiled = before is None or library.stat().st_mtime_ns != before  # ninja rebuilt it, or it was not there
    step = getattr(torch.classes, namespace).Q8Step  # q8_step.cpp's decode step (helpers.fastgen.cpu_step)
    ext = SimpleNamespace(q8_isa=ops.q8_isa, q8_matmul=ops.q8_matmul, Q8Step=step)
    return ext, seconds, compiled


def kernel(verbose: bool = False, variant: str | None = None):
    """Build (first time, cached) and load the kernel; returns the extension (``q8_isa()`` names its path).

    Loading it registers ``torch.ops.faster_gpt2.q8_matmul``. ``variant`` (a key of ``VARIANTS``: "avx2",
    "portable", "no_prefetch"; x86 only) builds another path instead, for tests and for notebook 03c's timing of
    the prefetch hint: its ``q8_matmul`` lives in an operator namespace of its own.
    Raises ``RuntimeError`` with what to do when it cannot be built here (see ``available``)."""
    global _ext, _build_s, _compiled
    if variant is None and _ext is not None:
        return _ext
    ok, why = available()
    if not ok:
        raise RuntimeError(f"The q8_0 kernel cannot be built here: {why}")
    if variant is not None:
        if variant not in VARIANTS:
            raise ValueError(f"variant takes one of {', '.join(VARIANTS)}, got {variant!r}.")
        if platform.machine().lower() not in ("x86_64", "amd64"):
            raise RuntimeError(f"The {variant} variant is an x86 build; this CPU is {platform.machine()}.")
        return _load(variant, verbose)[0]
    _ext, _build_s, _compiled = _load(None, verbose)
    return _ext


def first_build_seconds() -> float:
    """Seconds a first build of this CPU's kernel takes here: what a learner's first ``kernel()`` call costs.

    Builds the same source and flags into a fresh temporary folder under a new name and operator namespace (so
    nothing cached is reused), then deletes the folder."""
    ok, why = available()
    if not ok:
        raise RuntimeError(f"The q8_0 kernel cannot be built here: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        return _load(None, False, root=Path(tmp), tag=f"_first{os.getpid()}_{next(_FIRST_BUILDS)}")[1]


def build_seconds() -> float | None:
    """How long ``kernel()`` took in this process (a first build, or loading a cached one), or None."""
    return _build_s


def compiled_now() -> bool:
    """Whether this process compiled the kernel (False: it loaded an earlier build from the cache)."""
    return _compiled


def isa() -> str:
    """The instruction-set path the built kernel uses ("AVX-512 VNNI", "AVX2", ...)."""
    return kernel().q8_isa()


# The operator's signature is declared here, its CPU implementation by the kernel when it loads; the shape
# function lets torch.compile trace a step that calls it without running it.
_LIB = torch.library.Library("faster_gpt2", "DEF")
_LIB.define("q8_matmul(Tensor x, Tensor codes, Tensor scales, int n) -> Tensor")


@torch.library.register_fake("faster_gpt2::q8_matmul")
def _q8_matmul_shape(x, codes, scales, n):
    return x.new_empty(x.shape[0], n)


def matmul(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` (M, K) float32 times interleaved q8_0 weights with ``n`` output rows -> (M, n), by the kernel
    (built or loaded first if this process has not yet)."""
    kernel()
    return torch.ops.faster_gpt2.q8_matmul(x, codes, scales, n)


class Q8Linear(nn.Module):
    """A linear layer with q8_0 weights (interleaved for the kernel) and a float bias, computed by the kernel.

    Activations are quantized per block of 32 at each call, as llama.cpp does; inputs are float32.
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, in_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, codes.shape[0]
        codes, scale = interleave(codes, scale)
        self.register_buffer("codes", codes)  # (N rounded up to 4, Kp) int8, interleaved
        self.register_buffer("scales", scale)  # (N rounded up to 4, Kp / 32) fp16, interleaved
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)  # (out,)

    @classmethod
    def from_float(cls, layer: nn.Module) -> Q8Linear:
        """From any layer with a float ``weight`` (out, in) and a ``bias`` (or None); builds the kernel if needed."""
        kernel()
        codes, scale = quantize_q8_0(layer.weight)
        return cls(codes, scale, layer.bias, layer.weight.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise TypeError(
                f"Q8Linear takes float32 inputs on the CPU (it quantizes them itself), got {x.dtype} on {x.device}."
            )
        x2 = x.reshape(-1, self.in_features)  # (M, in): the kernel was loaded when the layer was made
        y = torch.ops.faster_gpt2.q8_matmul(x2, self.codes, self.scales, self.out_features)  # (M, out)
        y = y.view(*x.shape[:-1], self.out_features)  # (..., out)
        return y if self.bias is None else y + self.bias

    def quantized_bytes(self) -> int:
        """Bytes of the stored weight one product reads: int8 codes and fp16 scales, padding included."""
        return self.codes.numel() + self.scales.numel() * 2

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, q8_0"


def q8_0_model(model: nn.Module) -> nn.Module:
    """A copy of a GPT-2 on the CPU with every linear layer (the blocks' and the output layer) a ``Q8Linear``.

    GPT-2's blocks use transformers' ``Conv1D``: they are turned into ``nn.Linear`` first, as for dynamic int8
    (``quant.int8_dynamic``). The token embedding stays float (a step reads one row of it)."""
    from .models import conv1d_to_linear
    from .quant import swap_linears

    if next(model.parameters()).device.type != "cpu":
        raise ValueError("The q8_0 kernel runs on the CPU: move the model there first (model.to('cpu')).")
    out = conv1d_to_linear(copy.deepcopy(model).float())
    return swap_linears(out, Q8Linear.from_float, nn.Linear)
