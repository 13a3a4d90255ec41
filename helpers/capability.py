"""What this GPU can do, from its compute capability, and what the workbook chooses there.

The workbook's GPU runs were made on Hopper (H100, H200: compute capability 9.0). Learners also get a
T4 (7.5), an A100 (8.0) or an L4 (8.9). Each GPU-dependent choice is made here, in one place, with the
reason, so that a notebook can print what it chose and why, and so that the tests can fake a capability:

| choice | needs | else |
|---|---|---|
| half precision | bf16 arithmetic: 8.0 (Ampere) | fp16 |
| fp8 matrix multiplies | fp8 tensor cores: 8.9 (Ada, Hopper) | skipped |
| 2:4 sparse kernels | sparse tensor cores: 8.0 | skipped |
| torchao int4 weight-only | its int4 kernels: 8.0 | skipped |
| programmatic dependent launch | 9.0 (Hopper) | ordinary launches |
| the fast decoder's hand-written Triton step | checked on 9.x only (H100, H200) | the compiled step |

``WORKBOOK_FAKE_CAPABILITY=7.5`` pretends to have such a GPU (for the tests, and to see what a T4 would get).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Choice:
    """A decision and its reason, e.g. ``Choice(torch.float16, "no bf16 arithmetic before 8.0 ...")``."""

    value: object
    why: str

    def __bool__(self) -> bool:
        return bool(self.value)


def capability(device: torch.device | str | None = None) -> tuple[int, int] | None:
    """The GPU's compute capability (major, minor), or None without a CUDA GPU; honours WORKBOOK_FAKE_CAPABILITY."""
    fake = os.environ.get("WORKBOOK_FAKE_CAPABILITY", "").strip()
    if fake:
        try:
            major, minor = (int(x) for x in fake.split("."))
        except ValueError as err:
            raise ValueError(f"WORKBOOK_FAKE_CAPABILITY={fake!r}: write it as MAJOR.MINOR, e.g. 7.5 or 9.0.") from err
        return major, minor
    device = torch.device(device) if device is not None else None
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return None
    return torch.cuda.get_device_capability(device)


def _cc(cc) -> str:
    return f"compute capability {cc[0]}.{cc[1]}"


def half_dtype(cc: tuple[int, int] | None) -> Choice:
    """bf16 where the GPU does bf16 arithmetic (8.0+), fp16 before that; None on a CPU."""
    if cc is None:
        return Choice(None, "no CUDA GPU: the CPU path keeps fp32 (bf16 is emulated on CPUs without BF16 units)")
    if cc >= (8, 0):
        return Choice(torch.bfloat16, f"{_cc(cc)} has bf16 arithmetic (8.0 and newer)")
    return Choice(torch.float16, f"{_cc(cc)} has no bf16 arithmetic (it came with 8.0, Ampere): fp16 instead")


def _needs(cc, minimum: tuple[int, int], feature: str, arrived: str) -> Choice:
    """Yes from compute capability ``minimum`` on, with the reason either way."""
    need = f"{minimum[0]}.{minimum[1]}"
    if cc is None:
        return Choice(False, f"no CUDA GPU: {feature} needs compute capability {need} or newer")
    if cc >= minimum:
        return Choice(True, f"{_cc(cc)} has {feature}")
    return Choice(False, f"{_cc(cc)} lacks {feature} (it came with {need}, {arrived})")


def fp8(cc: tuple[int, int] | None) -> Choice:
    return _needs(cc, (8, 9), "fp8 tensor cores", "Ada and Hopper")


def sparse_24(cc: tuple[int, int] | None) -> Choice:
    return _needs(cc, (8, 0), "sparse tensor cores (2:4)", "Ampere")


def int4_weights(cc: tuple[int, int] | None) -> Choice:
    return _needs(cc, (8, 0), "the kernels torchao's int4 weight-only layers use", "Ampere")


def pdl(cc: tuple[int, int] | None) -> Choice:
    if cc is not None and cc >= (9, 0):
        return Choice(True, f"{_cc(cc)} has programmatic dependent launch (Hopper and newer)")
    return Choice(False, "programmatic dependent launch needs compute capability 9.0 (Hopper)")


def triton_step(cc: tuple[int, int] | None) -> Choice:
    """The fast decoder's hand-written Triton step: only where it was checked (9.x: H100, H200)."""
    if cc is None:
        return Choice(False, "no CUDA GPU: the hand-written step runs only on GPUs (and in Triton's interpreter)")
    if cc[0] == 9:
        return Choice(True, f"{_cc(cc)}: the step was checked token for token on H100 and H200 (9.0)")
    return Choice(False, f"{_cc(cc)}: the step was checked on 9.x GPUs only; the compiled step is used instead")


def summary(cc: tuple[int, int] | None = None) -> list[str]:
    """One line per choice for this GPU (or ``cc``): what the workbook uses and why."""
    cc = capability() if cc is None else cc
    choices = {
        "half precision": half_dtype(cc),
        "fp8 matmuls": fp8(cc),
        "2:4 sparsity": sparse_24(cc),
        "int4 weights (torchao)": int4_weights(cc),
        "early launch (PDL)": pdl(cc),
        "hand-written Triton step": triton_step(cc),
    }
    lines = []
    for name, choice in choices.items():
        value = choice.value
        shown = str(value).replace("torch.", "") if not isinstance(value, bool) else ("yes" if value else "no")
        lines.append(f"{name}: {shown} ({choice.why})")
    return lines
