"""helpers.timeline: a token's kernels, busy and idle time from two profiles (the profiling itself needs a GPU)."""

import pytest
import torch

from helpers import timeline


def test_busy_time_counts_overlapping_kernels_once():
    assert timeline.union_us([(0, 10), (5, 12), (20, 25)]) == 17  # 0-12 and 20-25
    assert timeline.union_us([(20, 25), (0, 10), (2, 3)]) == 15  # unsorted; one inside another
    assert timeline.union_us([]) == 0


def _generation(steps, per_token, period, kernel, prefill=150):
    """A generation's kernels as the profiler lists them: the prompt's pass (prefill kernels of other names), the
    first token's choice, then `steps` decode steps of per_token kernels of `kernel` us each, back to back."""
    events = [(f"prefill{i % 7}", -900.0 + i, -899.5 + i) for i in range(prefill)]
    events.append(("argmax", -600.0, -599.0))
    for t in range(steps):
        for k in range(per_token):
            start = t * period + k * kernel
            events.append((f"k{k}", start, start + kernel))
    return events


def test_decode_kernels_are_those_the_longer_generation_runs_more_often():
    short, long = _generation(1, 3, 100.0, 20.0), _generation(5, 3, 100.0, 20.0)  # 1 and 5 decode steps
    per_token = timeline.decode_kernels(short, long, 4)
    assert [len(t) for t in per_token] == [3, 3, 3, 3]
    assert [tok[0][1] for tok in per_token] == [100.0, 200.0, 300.0, 400.0]  # the last 4 steps
    s = timeline.summarize(per_token)
    assert s["kernels_per_token"] == 3
    assert s["period_us"] == pytest.approx(100) and s["busy_us"] == pytest.approx(60)  # 60 us busy of 100
    assert s["idle_us"] == pytest.approx(40) and s["busy_fraction"] == pytest.approx(0.6)
    assert s["one_token"] == [[0, 20], [20, 40], [40, 60]]
    assert s["kernel_names"] == ["k0", "k1", "k2"]


def test_one_kernel_a_token_is_busy_the_whole_token_but_the_launch_gap():
    short, long = _generation(1, 1, 100.0, 97.0), _generation(6, 1, 100.0, 97.0)
    s = timeline.summarize(timeline.decode_kernels(short, long, 5))
    assert s["kernels_per_token"] == 1 and s["idle_us"] == pytest.approx(3)


def test_profiles_that_do_not_differ_by_whole_tokens_are_refused():
    short, long = _generation(1, 3, 100.0, 20.0), _generation(5, 3, 100.0, 20.0)
    with pytest.raises(ValueError, match="not a whole number"):
        timeline.decode_kernels(short, long + [("k0", 900.0, 901.0)], 4)  # 13 kernels for 4 tokens
    with pytest.raises(ValueError, match="not a whole number"):
        timeline.decode_kernels(short, short, 4)  # no step at all
    with pytest.raises(ValueError, match="at least two tokens"):
        timeline.summarize(timeline.decode_kernels(short, _generation(2, 3, 100.0, 20.0), 1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_the_command_says_why(capsys):
    with pytest.raises(SystemExit):
        timeline.main([])
    assert "no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        timeline.token_profile(None, None)


def test_steps_leave_out_a_step_the_device_cannot_run(capsys):
    """Given a device, the streaming step (CUDA C++) is left out where it cannot run, with the reason printed."""
    from transformers import GPT2Config

    every = timeline.steps()
    kept = timeline.steps(torch.device("cpu"), GPT2Config())
    assert [kw["kernels"] for _, kw in every] == [True, "persistent", "dataflow", "stream"]
    assert [kw["kernels"] for _, kw in kept] == [True, "persistent", "dataflow"]
    said = capsys.readouterr().out
    assert said.startswith("streaming step") and "not profiled" in said and "NVIDIA GPU" in said


def test_profile_needs_a_prompt_on_a_gpu(sharp_gpt2):
    """The profile is of GPU kernels: a prompt on the CPU gets a clear error before any step is built."""
    with pytest.raises(ValueError, match="CUDA GPU"):
        timeline.profile(sharp_gpt2(), torch.zeros(1, 4, dtype=torch.long))
