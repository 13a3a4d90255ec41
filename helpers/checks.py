"""Checks for the exercises: each says what is wrong, not just "False".

A check returns True when the answer is right and raises ``AssertionError`` with a hint
otherwise, so a failed exercise cell shows the learner where to look. ``check_number`` is the
general form: the expected value, a tolerance, and hints keyed by the ratio a typical mistake gives.
"""

from __future__ import annotations


def _close(answer: float, expected: float, rel: float) -> bool:
    return abs(answer - expected) <= rel * abs(expected)


def check_number(
    answer,
    expected: float,
    *,
    unit: str,
    rel: float = 0.02,
    hints: dict[float, str] | None = None,
    right: str | None = None,
) -> bool:
    """Check a numeric answer; on a miss, name the mistake whose typical ratio (answer / expected) matches."""
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise AssertionError(f"Expected a number of {unit}, got {type(answer).__name__}.")
    if _close(answer, expected, rel):
        print(right or f"Right: {answer:,.4g} {unit}.")
        return True
    ratio = answer / expected if expected else float("inf")
    hint = next(
        (h for factor, h in (hints or {}).items() if _close(ratio, factor, 0.15)),
        f"your answer is {ratio:.3g}x the expected value.",
    )
    shown = f"{expected:,.0f}" if abs(expected) >= 100 else f"{expected:.3g}"  # 24,194 tokens/s; 0.6; 2.67
    raise AssertionError(f"Not quite: expected about {shown} {unit}; {hint}")


def check_model_bytes(answer, n_params: int, bytes_per_param: float) -> bool:
    """The size of a model's weights: parameters x bytes per parameter."""
    hints = {
        1 / 2**20: "that looks like MiB; the check wants plain bytes.",
        1 / bytes_per_param: "you counted parameters, not bytes: multiply by the bytes per parameter.",
        8: "you multiplied by bits, not bytes (8 bits = 1 byte).",
        2: "you used twice the bytes per parameter: fp32 is 4 bytes, fp16/bf16 2, int8 1.",
        0.5: "you used half the bytes per parameter: fp32 is 4 bytes, fp16/bf16 2, int8 1.",
    }
    expected = n_params * bytes_per_param
    return check_number(
        answer, expected, unit="bytes", rel=0.01, hints=hints, right=f"Right: {expected / 2**20:.1f} MiB."
    )


def check_bandwidth_limit(answer, model_bytes: float, bandwidth: float, batch: int = 1) -> bool:
    """The bandwidth-limited decode speed: batch x bandwidth / bytes read per step (weights only)."""
    hints = {
        1e-9: "check units: the bandwidth is in bytes per second, not GB/s.",
        0.5: "you divided by twice the bytes; a decode step reads each weight once.",
        2: "you used half the bytes; count every weight once (tied embeddings once).",
    }
    if batch > 1:
        hints[1 / batch] = "you left out the batch: one read of the weights serves every sequence."
    expected = batch * bandwidth / model_bytes
    return check_number(
        answer,
        expected,
        unit="tokens/s",
        hints=hints,
        right=f"Right: at most {expected:,.0f} tokens/s when every step reads all the weights once.",
    )


def check_kv_cache_bytes(answer, n_layer: int, n_embd: int, tokens: int, batch: int, bytes_per_value: float) -> bool:
    """KV-cache size: 2 (K and V) x layers x tokens x width x batch x bytes per value."""
    hints = {
        0.5: "you stored only K or only V: the cache holds both.",
        1 / n_layer: "you counted one layer: every layer keeps its own K and V.",
        8: "you multiplied by bits, not bytes.",
        1 / batch if batch > 1 else -1: "you left out the batch: each sequence has its own cache.",
    }
    expected = 2 * n_layer * tokens * n_embd * batch * bytes_per_value
    return check_number(
        answer,
        expected,
        unit="bytes",
        rel=0.01,
        hints=hints,
        right=f"Right: {expected / 2**20:,.1f} MiB of keys and values.",
    )


def check_loss_scale(scale, smallest_grad: float, largest_grad: float) -> bool:
    """A loss scale for fp16 training: lifts the smallest gradient to a normal fp16 number, keeps the largest finite."""
    import torch

    fp16 = torch.finfo(torch.float16)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise AssertionError(f"Expected a positive number, got {scale!r}.")
    if smallest_grad * scale < fp16.smallest_normal:
        raise AssertionError(
            f"Too small: {smallest_grad:g} x {scale:g} = {smallest_grad * scale:.3g} is still below fp16's "
            f"smallest normal number {fp16.smallest_normal:.3g}, so it loses precision or becomes 0."
        )
    if largest_grad * scale > fp16.max:
        raise AssertionError(
            f"Too large: {largest_grad:g} x {scale:g} = {largest_grad * scale:.3g} overflows fp16's "
            f"maximum {fp16.max:g} and becomes inf (the scaler would skip the step)."
        )
    print(f"Right: every gradient from {smallest_grad:g} to {largest_grad:g} fits fp16's normal range once scaled.")
    return True


def check_magnitude_mask(mask, weight, sparsity: float) -> bool:
    """A magnitude-pruning mask: True (or 1) where a weight is kept, the ``sparsity`` smallest |w| dropped."""
    import torch

    if not isinstance(mask, torch.Tensor):
        raise AssertionError(f"Expected a tensor the shape of the weight, got {type(mask).__name__}.")
    if mask.shape != weight.shape:
        raise AssertionError(
            f"The mask has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}: they must match."
        )
    keep = mask != 0
    size = weight.detach().abs()
    k = max(1, round(sparsity * weight.numel()))
    right = size > size.flatten().kthvalue(k).values
    if (~keep == right).float().mean() > 0.99:
        raise AssertionError("Your mask is the wrong way round: True must mark a weight that stays (a large |w|).")
    pruned = 1 - keep.float().mean().item()
    if abs(pruned - sparsity) > 0.005:
        raise AssertionError(f"Your mask drops {pruned:.1%} of the weights; it should drop {sparsity:.1%}.")
    if keep.any() and (~keep).any() and size[keep].min() < size[~keep].max():
        by_value = weight > weight.flatten().kthvalue(k).values
        if (by_value == keep).float().mean() > 0.99:
            raise AssertionError(
                "You ranked the weights by value, not by magnitude: a weight of -0.9 matters as much as one of "
                "+0.9. Compare |w| (weight.abs())."
            )
        raise AssertionError(
            f"Some kept weights are smaller in magnitude ({size[keep].min():.3g}) than some dropped ones "
            f"({size[~keep].max():.3g}): keep the largest |w|."
        )
    print(f"Right: {pruned:.1%} of the weights dropped, every one smaller in magnitude than every weight kept.")
    return True
