"""Weight quantization from scratch: the quantizers the quantization lessons build and later ones reuse.

- ``quantize`` / ``dequantize``: symmetric (absmax) or asymmetric (zero-point) integer quantization of a
  2-D weight whose rows are output channels, per tensor, per channel (row) or per group of columns.
- ``fake_quantize``: quantize then dequantize, to measure what the rounding costs in quality.
- ``pack_int4`` / ``unpack_int4``: two 4-bit values in one byte, as int4 weights are stored.
- ``block_linears``: every linear layer inside a GPT-2's blocks, as (parent, attribute, layer).
- ``fake_quantize_model``: a copy of a GPT-2 with every block's linear weights fake-quantized.
- ``weight_bytes``: the storage a quantized model needs (integers plus scales and zero points).
- ``int8_dynamic``: PyTorch's dynamic int8 (CPU kernels) on a GPT-2, after turning its ``Conv1D`` layers into
  ``nn.Linear`` (notebook 03 builds it step by step; notebook 07 reuses it).
- quantization by swapping modules (the fast decoder's int8, notebook 05): ``Int8Linear`` (int8 weights with one
  scale per output channel, weight-only), ``dynamic_int8_linear`` (``torch.ao``'s CPU kernels) and
  ``swap_linears``, which replaces a model's linear layers with what a function makes of each.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GRANULARITIES = ("tensor", "channel", "group")


def _check(bits: int, granularity: str, group_size: int) -> None:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}.")
    if granularity not in GRANULARITIES:
        raise ValueError(f"Unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}.")
    if granularity == "group" and group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}.")


def _grouped(w: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """View ``w`` (out, in) as (units, values): one row per scale."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    if granularity == "channel":
        return w
    if w.shape[1] % group_size:
        raise ValueError(f"The input width {w.shape[1]} is not a multiple of group_size={group_size}.")
    return w.reshape(-1, group_size)


def quantize(
    w: torch.Tensor, bits: int = 8, *, symmetric: bool = True, granularity: str = "channel", group_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes, scales and zero points for a 2-D weight ``w`` (rows are output channels).

    Symmetric: codes in [-(2^(b-1) - 1), 2^(b-1) - 1], scale = max|w| / that bound, zero = 0.
    Asymmetric: codes in [0, 2^b - 1], scale = (max - min) / (2^b - 1), zero = round(-min / scale).
    ``w ~= (codes - zero) * scale`` with one scale per tensor, row, or group of ``group_size`` columns.
    """
    _check(bits, granularity, group_size)
    if w.dim() != 2:
        raise ValueError(f"quantize() expects a 2-D weight, got shape {tuple(w.shape)}.")
    g = _grouped(w.float(), granularity, group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (g.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
        zero = torch.zeros_like(scale)
        codes = torch.clamp(torch.round(g / scale), -qmax, qmax)
    else:
        qmax = 2**bits - 1
        lo, hi = g.amin(dim=1, keepdim=True), g.amax(dim=1, keepdim=True)
        scale = ((hi - lo) / qmax).clamp(min=1e-12)
        zero = torch.round(-lo / scale)
        codes = torch.clamp(torch.round(g / scale) + zero, 0, qmax)
    return codes.to(torch.int8 if symmetric else torch.uint8), scale, zero


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Back to floats: ``(codes - zero) * scale``, reshaped to the weight's ``shape``."""
    return ((codes.float() - zero) * scale).reshape(shape)


def fake_quantize(
    w: torch.Tensor, bits: int = 8, *, symmetric: bool = True, granularity: str = "channel", group_size: int = 128
) -> torch.Tensor:
    """``w`` rounded to ``bits``-bit integers and back, in ``w``'s dtype: the error quantization makes."""
    codes, scale, zero = quantize(w, bits, symmetric=symmetric, granularity=granularity, group_size=group_size)
    return dequantize(codes, scale, zero, w.shape).to(w.dtype)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack signed 4-bit codes (-8..7, even count) two per byte: low nibble first."""
    flat = codes.flatten().to(torch.int16)
    if flat.numel() % 2:
        raise ValueError("pack_int4 needs an even number of values.")
    if flat.min() < -8 or flat.max() > 7:
        raise ValueError("pack_int4 takes values in -8..7.")
    nibbles = (flat & 0xF).to(torch.uint8)
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of ``pack_int4``: int8 codes of the given shape."""
    low = (packed & 0xF).to(torch.int16)
    high = (packed >> 4).to(torch.int16)
    both = torch.stack([low, high], dim=1).flatten()
    both = torch.where(both > 7, both - 16, both)
    return both.to(torch.int8).reshape(shape)


def block_linears(model: nn.Module):
    """(parent, attribute, module) of every linear layer inside the transformer blocks (Conv1D or nn.Linear)."""
    from transformers.pytorch_utils import Conv1D

    for block in model.transformer.h:
        for parent in (block.attn, block.mlp):
            for name, child in parent.named_children():
                if isinstance(child, (Conv1D, nn.Linear)):
                    yield parent, name, child


def fake_quantize_model(
    model: nn.Module, bits: int, *, symmetric: bool = True, granularity: str = "channel", group_size: int = 128
) -> nn.Module:
    """A copy of a GPT-2 whose block weights are fake-quantized (embeddings and output layer untouched)."""
    from transformers.pytorch_utils import Conv1D

    out = copy.deepcopy(model)
    with torch.no_grad():
        for _, _, layer in block_linears(out):
            w = layer.weight.t() if isinstance(layer, Conv1D) else layer.weight  # rows = output channels
            wq = fake_quantize(w, bits, symmetric=symmetric, granularity=granularity, group_size=group_size)
            layer.weight.copy_(wq.t() if isinstance(layer, Conv1D) else wq)
    return out


def weight_bytes(
    model: nn.Module,
    bits: int,
    *,
    granularity: str = "channel",
    group_size: int = 128,
    scale_bytes: int = 2,
    symmetric: bool = True,
) -> int:
    """Bytes to store the model with block weights at ``bits`` (plus scales / zero points), the rest as it is."""
    from transformers.pytorch_utils import Conv1D

    quantized, ids = 0.0, set()
    for _, _, layer in block_linears(model):
        w = layer.weight
        ids.add(id(w))
        n_in, n_out = w.shape if isinstance(layer, Conv1D) else w.shape[::-1]
        units = {"tensor": 1, "channel": n_out, "group": n_out * n_in // group_size}[granularity]
        quantized += w.numel() * bits / 8 + units * scale_bytes * (1 if symmetric else 2)
    rest = {id(t): t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in ids}
    return int(quantized + sum(t.numel() * t.element_size() for t in rest.values()))


def int8_dynamic(model: nn.Module, include_lm_head: bool = True) -> nn.Module:
    """A copy of a GPT-2 on the CPU with ``torch.ao``'s dynamic int8 linear layers (int8 weights, activations
    quantized at each call): every block's layers and, with ``include_lm_head``, the output layer.

    ``quantize_dynamic`` only replaces ``nn.Linear``, and GPT-2's blocks use transformers' ``Conv1D``, so they
    are converted first (a plain ``quantize_dynamic(model, {nn.Linear})`` quantizes only the output layer).
    """
    from torch.ao.quantization import quantize_dynamic

    from .models import conv1d_to_linear

    if next(model.parameters()).device.type != "cpu":
        raise ValueError("Dynamic int8 runs on the CPU: move the model there first (model.to('cpu')).")
    out = conv1d_to_linear(copy.deepcopy(model).float())
    names = {name for name, layer in out.named_modules() if isinstance(layer, nn.Linear)}
    if not include_lm_head:
        names.discard("lm_head")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(out, names, dtype=torch.qint8)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, one scale per output channel, weight-only (activations stay float).

    ``y = (x @ codes.T) * scale + bias``. Compiled, the int8-to-float conversion fuses into the product, so
    the weights are read as int8 (a quarter of fp32's bytes, half of bf16's). ``matvec=True`` computes a
    one-row input as multiply-and-sum, as ``helpers.fastgen.model.matvec`` does for float weights.
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(codes, requires_grad=False)  # (out, in) int8
        self.scale = nn.Parameter(scale, requires_grad=False)  # (out,)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)  # (out,)
        self.matvec = False

    @classmethod
    def from_float(cls, layer: nn.Module) -> Int8Linear:
        """From any layer with a float ``weight`` (out, in) and a ``bias`` (or None): scales in its dtype."""
        codes, scale, _ = quantize(layer.weight.detach().float(), 8, granularity="channel")
        bias = None if layer.bias is None else layer.bias.detach()
        out = cls(codes, scale.squeeze(1).to(layer.weight.dtype), bias)
        out.matvec = getattr(layer, "matvec", False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.matvec and x.shape[:-1].numel() == 1:
            y = (x.unsqueeze(-2).float() * self.weight.float()).sum(-1).to(x.dtype)  # (..., out), one pass
        else:
            y = F.linear(x, self.weight.to(x.dtype))
        y = y * self.scale
        return y if self.bias is None else y + self.bias

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the dequantized weight (a tied token embedding reads them)."""
        return F.embedding(ids, self.weight).to(self.scale.dtype) * self.scale[ids].unsqueeze(-1)  # (..., in)


def dynamic_int8_linear(layer: nn.Module) -> nn.Module:
    """``torch.ao``'s dynamic int8 linear layer (FBGEMM kernels on a CPU, activations quantized at each call)
    from any layer with a float ``weight`` (out, in) and a ``bias`` (or None)."""
    from torch.ao.quantization import quantize_dynamic

    n_out, n_in = layer.weight.shape
    lin = nn.Linear(n_in, n_out, bias=layer.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(layer.weight.float())
        if layer.bias is not None:
            lin.bias.copy_(layer.bias.float())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)[0]


def swap_linears(module: nn.Module, make: Callable[[nn.Module], nn.Module], kind: type) -> nn.Module:
    """Replace, in place, every submodule of type ``kind`` with ``make(that module)``; return ``module``."""
    for name, child in list(module.named_children()):
        if isinstance(child, kind):
            setattr(module, name, make(child))
        else:
            swap_linears(child, make, kind)
    return module
