"""Pruning a GPT-2: zeros in the weights (unstructured, 2:4) or fewer neurons and blocks (structured).

Only the linear layers inside the transformer blocks are pruned (``prunable``). The token embedding
is left alone: GPT-2 ties it to the output layer, so pruning it would cut both the input lookup and
the last matrix multiply at once, and the position embedding is a lookup that costs no arithmetic.

- ``magnitude_prune``: zero the smallest weights, per layer or globally, with ``torch.nn.utils.prune``;
  ``make_permanent`` turns its masks into plain weights; ``sparsity`` measures the zeros.
- ``mask_2_4`` / ``prune_2_4``: 2:4 semi-structured sparsity (2 of every 4 inputs kept), on any device;
  ``to_semi_structured_24`` stores it for the GPU's sparse tensor cores (CUDA only).
- ``neuron_importance`` / ``prune_neurons``: remove MLP neurons, giving a smaller dense GPT-2
  (``config.n_inner`` shrinks, so it saves and loads like any GPT-2).
- ``head_importance`` / ``mask_heads``: score attention heads and zero the least important ones.
  Zeroing is as far as a stock GPT-2 goes: its attention derives the head width from
  ``n_embd // n_head``, and transformers 5 removed ``prune_heads`` and ``config.pruned_heads``.
- ``drop_blocks``: remove whole transformer blocks (heads and MLP together), ``config.n_layer`` shrinks.
- ``csr_vs_dense``: time a dense matrix-vector product against the same matrix stored as CSR.

Every function that changes a model returns a changed copy and leaves its argument untouched.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from . import capability
from . import device as devices
from .quant import block_linears

SCOPES = ("layer", "global")


def prunable(model: nn.Module) -> dict[str, nn.Module]:
    """The linear layers inside the blocks, by name (``transformer.h.0.attn.c_attn``, ...), in order."""
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(layer)]: layer for _, _, layer in block_linears(model)}


def _check_fraction(value: float, what: str) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value}.")


def magnitude_prune(
    model: nn.Module,
    sparsity: float,
    *,
    scope: str = "layer",
    layers: list[str] | None = None,
    permanent: bool = True,
) -> nn.Module:
    """A copy of ``model`` with the smallest-magnitude ``sparsity`` of its block weights set to zero.

    ``scope="layer"`` removes the same fraction from every layer; ``scope="global"`` ranks all the
    weights together, so layers with small weights lose more. ``layers`` (names from ``prunable``)
    restricts pruning to some layers. With ``permanent=False`` the copy keeps torch's mask
    (``weight = weight_orig * weight_mask`` before every forward), so fine-tuning cannot revive a
    pruned weight; call ``make_permanent`` afterwards.
    """
    if scope not in SCOPES:
        raise ValueError(f"Unknown scope {scope!r}: use one of {', '.join(SCOPES)}.")
    _check_fraction(sparsity, "sparsity")
    out = copy.deepcopy(model)
    chosen = prunable(out)
    if layers is not None:
        unknown = sorted(set(layers) - set(chosen))
        if unknown:
            raise ValueError(f"Not prunable layers: {unknown[:3]}. Names come from prune.prunable(model).")
        chosen = {name: chosen[name] for name in layers}
    if scope == "layer":
        for layer in chosen.values():
            torch_prune.l1_unstructured(layer, "weight", amount=sparsity)
    else:
        params = [(layer, "weight") for layer in chosen.values()]
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    return make_permanent(out) if permanent else out


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold torch's pruning masks into plain weights (``prune.remove``), in place; return the model."""
    for module in model.modules():
        if hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")
    return model


def _weight(layer: nn.Module) -> torch.Tensor:
    """The weight a layer computes with (masked if a pruning mask is attached)."""
    if hasattr(layer, "weight_mask"):
        return layer.weight_orig * layer.weight_mask
    return layer.weight


def sparsity(model: nn.Module, per_layer: bool = False) -> float | dict[str, float]:
    """Measured fraction of exact zeros in the block weights (overall, or per layer name)."""
    zeros, total = {}, {}
    for name, layer in prunable(model).items():
        w = _weight(layer).detach()
        zeros[name], total[name] = int((w == 0).sum()), w.numel()
    if per_layer:
        return {name: zeros[name] / total[name] for name in zeros}
    return sum(zeros.values()) / sum(total.values())


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """2:4 mask of a weight stored as (out, in) like ``nn.Linear``: in every run of 4 consecutive
    inputs of a row, keep the 2 largest |w| (True) and drop the other 2 (False)."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        raise ValueError(
            f"mask_2_4 needs a 2-D weight whose input width is a multiple of 4, got {tuple(weight.shape)}."
        )
    groups = weight.detach().abs().reshape(weight.shape[0], -1, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(weight.shape)


def _is_conv1d(layer: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(layer, Conv1D)


def prune_2_4(model: nn.Module, *, permanent: bool = True) -> nn.Module:
    """A copy of ``model`` whose block weights follow the 2:4 pattern (half the weights zero).

    Runs on any device: it measures what 2:4 costs in quality. ``permanent=False`` keeps the masks
    attached for fine-tuning, as in ``magnitude_prune``.
    """
    out = copy.deepcopy(model)
    for layer in prunable(out).values():
        if _is_conv1d(layer):  # Conv1D stores (in, out): the groups of 4 run down its columns
            mask = mask_2_4(layer.weight.t()).t()
        else:
            mask = mask_2_4(layer.weight)
        torch_prune.custom_from_mask(layer, "weight", mask)
    return make_permanent(out) if permanent else out


class _FlatLinear(nn.Linear):
    """``nn.Linear`` for torch's 2:4 sparse weights, which support a plain 2-D product only: the input is
    flattened to rows, padded to a multiple of 16 rows (what the sparse kernels tile by), multiplied,
    and the bias is added afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        n = rows.shape[0]
        pad = -n % 16
        if pad:
            rows = F.pad(rows, (0, 0, 0, pad))
        y = F.linear(rows, self.weight)[:n]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1])


def to_semi_structured_24(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (CUDA, fp16 or bf16) whose block layers are ``nn.Linear`` with 2:4 sparse
    weights in torch's semi-structured format (``torch.sparse.to_sparse_semi_structured``): sparse
    tensor cores (compute capability 8.0 or newer) skip the zeros. The embeddings and the output
    layer stay dense."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    from .models import conv1d_to_linear

    devices.require_cuda("2:4 semi-structured sparsity (torch.sparse.to_sparse_semi_structured)")
    param = next(model.parameters())
    if param.device.type != "cuda":
        raise ValueError("Move the model to the GPU first (model.to('cuda')).")
    choice = capability.sparse_24(capability.capability(param.device))
    if not choice:
        raise RuntimeError(
            f"2:4 sparse kernels cannot run on {torch.cuda.get_device_name(param.device)}: {choice.why}."
        )
    if param.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"Use fp16 or bf16 weights for the 2:4 kernels, not {param.dtype}.")
    # what to_sparse_semi_structured does, choosing CUTLASS's kernels where torch was built without cuSPARSELt
    cusparselt = torch.backends.cusparselt.is_available()
    backend = SparseSemiStructuredTensorCUSPARSELT if cusparselt else SparseSemiStructuredTensorCUTLASS
    out = conv1d_to_linear(copy.deepcopy(model))
    with torch.no_grad():
        for _, _, layer in block_linears(out):
            w = layer.weight.detach()
            dense = (w * mask_2_4(w)).contiguous()
            layer.weight = nn.Parameter(backend.from_dense(dense), requires_grad=False)
            layer.__class__ = _FlatLinear  # same parameters, 2-D multiply
    return out


def _calibrate(model: nn.Module, tokens: torch.Tensor, modules: dict, reduce) -> None:
    """Run ``tokens`` (1-D) through ``model`` in windows; ``reduce(key, x)`` sees each module's input."""
    hooks = [m.register_forward_pre_hook(lambda m, args, k=k: reduce(k, args[0].detach())) for k, m in modules.items()]
    device = next(model.parameters()).device
    window = model.config.n_positions
    try:
        with torch.no_grad():
            for start in range(0, max(1, tokens.numel() - 1), window):
                chunk = tokens[start : start + window]
                if chunk.numel() > 1:
                    model(input_ids=chunk[None].to(device))
    finally:
        for h in hooks:
            h.remove()


def neuron_importance(model: nn.Module, tokens: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One score per MLP neuron, per block: how much the neuron adds to the residual stream.

    Score = (typical size of the neuron's activation) x (norm of its output weights). With ``tokens``
    (a 1-D tensor of calibration text) the activation size is the mean |activation| measured on it;
    without, it is approximated by the norm of the neuron's input weights.
    """
    blocks = model.transformer.h
    out_norm = [b.mlp.c_proj.weight.detach().float().norm(dim=1) for b in blocks]  # Conv1D (inner, d): row = neuron
    if tokens is None:
        return [b.mlp.c_fc.weight.detach().float().norm(dim=0) * n for b, n in zip(blocks, out_norm, strict=True)]
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}

    def reduce(i, x):
        x = x.reshape(-1, x.shape[-1]).float()
        sums[i] = sums.get(i, 0) + x.abs().sum(0)
        counts[i] = counts.get(i, 0) + x.shape[0]

    _calibrate(model, tokens, {i: b.mlp.c_proj for i, b in enumerate(blocks)}, reduce)
    return [sums[i].cpu() / counts[i] * out_norm[i].cpu() for i in range(len(blocks))]


def head_importance(model: nn.Module, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """One score per attention head, shape (n_layer, n_head): how much the head adds to the residual.

    With ``tokens`` it is the mean norm of the head's contribution (its output times its slice of the
    output projection) measured on them; without, the norm of its value weights times the norm of
    its output-projection rows.
    """
    n_head = model.config.n_head
    d = model.config.n_embd
    hd = d // n_head
    rows = []
    if tokens is None:
        for b in model.transformer.h:
            v = b.attn.c_attn.weight.detach().float()[:, 2 * d :].reshape(d, n_head, hd)
            proj = b.attn.c_proj.weight.detach().float().reshape(n_head, hd, d)
            rows.append(v.norm(dim=(0, 2)) * proj.norm(dim=(1, 2)))
        return torch.stack(rows).cpu()
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    projs = [b.attn.c_proj.weight.detach().float().reshape(n_head, hd, d) for b in model.transformer.h]

    def reduce(i, x):
        heads = x.reshape(-1, n_head, hd).float()  # c_proj's input: the heads' outputs side by side
        contrib = torch.einsum("thk,hkd->thd", heads, projs[i])
        sums[i] = sums.get(i, 0) + contrib.norm(dim=-1).sum(0)
        counts[i] = counts.get(i, 0) + heads.shape[0]

    _calibrate(model, tokens, {i: b.attn.c_proj for i, b in enumerate(model.transformer.h)}, reduce)
    return torch.stack([sums[i].cpu() / counts[i] for i in range(len(projs))])


def _rebuild(model: nn.Module, config, state: dict) -> nn.Module:
    """A new GPT-2 of ``config`` (same class, dtype and device as ``model``) holding ``state``."""
    param = next(model.parameters())
    new = type(model)(config).to(device=param.device, dtype=param.dtype)
    new.load_state_dict(state)
    new.generation_config = copy.deepcopy(model.generation_config)
    return new.train(model.training)


def _n_removed(fraction: float, total: int, what: str) -> int:
    _check_fraction(fraction, f"The fraction of {what} to remove")
    return round(fraction * total)


def prune_neurons(model: nn.Module, fraction: float, scores: list[torch.Tensor] | None = None) -> nn.Module:
    """A smaller GPT-2 with the lowest-scoring ``fraction`` of MLP neurons removed from every block.

    GPT-2's config has one MLP width for all blocks (``n_inner``), so every block keeps the same
    number of neurons; which ones it keeps is decided per block by ``scores`` (default: weight-based
    ``neuron_importance``). The result is dense: its matrices are narrower, not full of zeros.
    """
    inner = model.transformer.h[0].mlp.c_fc.weight.shape[1]
    keep_n = inner - _n_removed(fraction, inner, "neurons")
    scores = scores if scores is not None else neuron_importance(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, s in enumerate(scores):
        keep = s.topk(keep_n).indices.sort().values.to(state[f"transformer.h.{i}.mlp.c_fc.bias"].device)
        p = f"transformer.h.{i}.mlp."
        state[p + "c_fc.weight"] = state[p + "c_fc.weight"][:, keep].contiguous()  # Conv1D (d, inner)
        state[p + "c_fc.bias"] = state[p + "c_fc.bias"][keep].contiguous()
        state[p + "c_proj.weight"] = state[p + "c_proj.weight"][keep, :].contiguous()  # Conv1D (inner, d)
    config = copy.deepcopy(model.config)
    config.n_inner = keep_n
    return _rebuild(model, config, state)


def mask_heads(model: nn.Module, fraction: float, scores: torch.Tensor | None = None) -> nn.Module:
    """A copy with the lowest-scoring ``fraction`` of heads in every block zeroed (same shapes).

    The heads' query, key and value weights and biases and their rows of the output projection
    become zero, so they contribute nothing. The model does not get smaller or faster.
    """
    n_head, d = model.config.n_head, model.config.n_embd
    hd = d // n_head
    drop_n = _n_removed(fraction, n_head, "heads")
    scores = scores if scores is not None else head_importance(model)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for block, s in zip(out.transformer.h, scores, strict=True):
            for h in s.topk(drop_n, largest=False).indices.tolist():
                for part in range(3):  # q, k, v columns of c_attn (Conv1D (d, 3d))
                    cols = slice(part * d + h * hd, part * d + (h + 1) * hd)
                    block.attn.c_attn.weight[:, cols] = 0
                    block.attn.c_attn.bias[cols] = 0
                block.attn.c_proj.weight[h * hd : (h + 1) * hd, :] = 0
    return out


def drop_blocks(model: nn.Module, blocks: list[int]) -> nn.Module:
    """A smaller GPT-2 without the transformer blocks numbered in ``blocks`` (``config.n_layer`` shrinks)."""
    n = model.config.n_layer
    bad = [b for b in blocks if not 0 <= b < n]
    if bad or len(set(blocks)) >= n:
        raise ValueError(f"blocks must be distinct indices in 0..{n - 1}, leaving at least one; got {blocks}.")
    kept = [i for i in range(n) if i not in set(blocks)]
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("transformer.h."):
            index, rest = key[len("transformer.h.") :].split(".", 1)
            if int(index) in kept:
                state[f"transformer.h.{kept.index(int(index))}.{rest}"] = value.clone()
        else:
            state[key] = value.clone()
    config = copy.deepcopy(model.config)
    config.n_layer = len(kept)
    return _rebuild(model, config, state)


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def csr_vs_dense(
    shapes: list[tuple[int, int]],
    sparsities: list[float],
    *,
    batch: int = 1,
    repeats: int = 5,
    working_set_mib: float = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[dict]:
    """Time ``W x`` with ``W`` dense against ``W`` in CSR, for weights of ``shapes`` (in, out as GPT-2
    stores them) pruned by magnitude to each sparsity, on ``batch`` input vectors.

    A decode step reads every weight from memory once, so each timed run multiplies by enough copies
    of ``W`` to fill ``working_set_mib`` (more than a CPU's last-level cache) instead of one matrix
    that would stay in cache. Each row: shape, sparsity, dense and CSR time per product (microseconds),
    their ratio (CSR / dense: below 1 means CSR is faster) and the bytes each format stores (CSR:
    values + int64 column indices + row pointers). Timings use ``helpers.timing.time_fn`` (median of
    ``repeats`` runs).
    """
    from .timing import time_fn

    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n_in, n_out in shapes:
        w = torch.randn(n_out, n_in, generator=gen)  # (out, in): y = W x, one column per input vector
        x = torch.randn(n_in, batch, generator=gen).to(device)
        copies = max(1, math.ceil(working_set_mib * 2**20 / _nbytes(w)))
        for s in sparsities:
            threshold = w.abs().flatten().kthvalue(max(1, round(s * w.numel()))).values if s > 0 else -1.0
            dense = [torch.where(w.abs() > threshold, w, 0.0).to(device) for _ in range(copies)]
            csr = [m.to_sparse_csr() for m in dense]

            def products(mats, x=x):
                for m in mats:
                    m @ x

            t_dense = time_fn(lambda m=dense: products(m), warmup=1, repeats=repeats, device=device)["median"]
            t_csr = time_fn(lambda m=csr: products(m), warmup=1, repeats=repeats, device=device)["median"]
            nnz = csr[0].values().numel()
            rows.append(
                {
                    "shape": f"{n_in}x{n_out}",
                    "sparsity": s,
                    "measured_sparsity": 1 - nnz / w.numel(),
                    "batch": batch,
                    "dense_us": t_dense / copies * 1e6,
                    "csr_us": t_csr / copies * 1e6,
                    "ratio": t_csr / t_dense,
                    "dense_bytes": _nbytes(dense[0]),
                    "csr_bytes": _nbytes(csr[0].values(), csr[0].col_indices(), csr[0].crow_indices()),
                }
            )
            del dense, csr
    return rows
