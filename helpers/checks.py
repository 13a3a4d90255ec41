"""Checks for the exercises: each says what is wrong, not just "False".

A check returns True when the answer is right and raises ``AssertionError`` with a hint
otherwise, so a failed exercise cell shows the learner where to look.
"""

from __future__ import annotations


def _close(answer: float, expected: float, rel: float) -> bool:
    return abs(answer - expected) <= rel * abs(expected)


def _ratio_hint(answer: float, expected: float, hints: dict[float, str]) -> str:
    ratio = answer / expected if expected else float("inf")
    for factor, hint in hints.items():
        if _close(ratio, factor, 0.15):
            return hint
    return f"your answer is {ratio:.3g}x the expected value."


def check_model_bytes(answer: float, n_params: int, bytes_per_param: float) -> bool:
    """The size of a model's weights: parameters x bytes per parameter."""
    expected = n_params * bytes_per_param
    if not isinstance(answer, (int, float)):
        raise AssertionError(f"Expected a number of bytes, got {type(answer).__name__}.")
    if _close(answer, expected, 0.01):
        print(f"Right: {answer / 2**20:.1f} MiB.")
        return True
    hint = _ratio_hint(
        answer,
        expected,
        {
            2**20 / 1: "that looks like bytes counted as MiB twice; give plain bytes.",
            1 / 2**20: "that looks like MiB; the check wants plain bytes.",
            1 / bytes_per_param: "you counted parameters, not bytes: multiply by the bytes per parameter.",
            8: "you multiplied by bits, not bytes (8 bits = 1 byte).",
            2: "you used twice the bytes per parameter: fp32 is 4 bytes, fp16/bf16 2, int8 1.",
            0.5: "you used half the bytes per parameter: fp32 is 4 bytes, fp16/bf16 2, int8 1.",
        },
    )
    raise AssertionError(f"Not quite: expected about {expected:,.0f} bytes; {hint}")


def check_bandwidth_limit(answer: float, model_bytes: float, bandwidth: float, batch: int = 1) -> bool:
    """The bandwidth-limited decode speed: batch x bandwidth / bytes read per step (weights only)."""
    expected = batch * bandwidth / model_bytes
    if not isinstance(answer, (int, float)):
        raise AssertionError(f"Expected tokens per second as a number, got {type(answer).__name__}.")
    if _close(answer, expected, 0.02):
        print(f"Right: at most {answer:,.0f} tokens/s when every step reads all the weights once.")
        return True
    hint = _ratio_hint(
        answer,
        expected,
        {
            1 / batch if batch > 1 else -1: "you left out the batch: one read of the weights serves every sequence.",
            1e9: "check units: the bandwidth is in bytes per second, not GB/s.",
            1e-9: "check units: the bandwidth is in bytes per second, not GB/s.",
            0.5: "you divided by twice the bytes; a decode step reads each weight once.",
            2: "you used half the bytes; count every weight once (tied embeddings once).",
        },
    )
    raise AssertionError(f"Not quite: expected about {expected:,.0f} tokens/s; {hint}")
