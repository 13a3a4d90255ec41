"""helpers.timeline: a token's busy and idle time from kernel intervals (the profiling itself needs a GPU)."""

import pytest
import torch

from helpers import timeline


def test_busy_time_counts_overlapping_kernels_once():
    assert timeline.union_us([(0, 10), (5, 12), (20, 25)]) == 17  # 0-12 and 20-25
    assert timeline.union_us([(20, 25), (0, 10), (2, 3)]) == 15  # unsorted; one inside another
    assert timeline.union_us([]) == 0


def _tokens(n_tokens, per_token, period, kernel):
    """Kernels of n_tokens tokens after a prefill kernel: per_token kernels of `kernel` us each, back to back."""
    events = [("prefill", -500.0, -400.0)]
    for t in range(n_tokens):
        for k in range(per_token):
            start = t * period + k * kernel
            events.append((f"k{k}", start, start + kernel))
    return events


def test_tokens_split_from_the_end_and_summarized():
    events = _tokens(n_tokens=4, per_token=3, period=100.0, kernel=20.0)  # 60 us busy of 100
    per_token = timeline.split_tokens(events, 4)
    assert [len(t) for t in per_token] == [3, 3, 3, 3]
    assert all(name != "prefill" for tok in per_token for name, _, _ in tok)
    s = timeline.summarize(per_token)
    assert s["kernels_per_token"] == 3
    assert s["period_us"] == pytest.approx(100) and s["busy_us"] == pytest.approx(60)
    assert s["idle_us"] == pytest.approx(40) and s["busy_fraction"] == pytest.approx(0.6)
    assert s["one_token"] == [[0, 20], [20, 40], [40, 60]]
    assert s["kernel_names"] == ["k0", "k1", "k2"]


def test_one_kernel_a_token_is_busy_the_whole_token_but_the_launch_gap():
    s = timeline.summarize(timeline.split_tokens(_tokens(5, 1, period=100.0, kernel=97.0), 5))
    assert s["kernels_per_token"] == 1 and s["idle_us"] == pytest.approx(3)


def test_too_few_kernels_or_tokens_are_refused():
    with pytest.raises(ValueError, match="at least one kernel per token"):
        timeline.split_tokens([("k", 0.0, 1.0)], 2)
    with pytest.raises(ValueError, match="at least two tokens"):
        timeline.summarize(timeline.split_tokens([("k", 0.0, 1.0)], 1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_the_command_says_why(capsys):
    with pytest.raises(SystemExit):
        timeline.main([])
    assert "no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        timeline.token_profile(None, None)
