"""helpers.timing: the one timing discipline (warm-up, repeats, median and spread)."""

import pytest

from helpers import bench, device, timing


def test_time_fn_reports_the_median_and_the_spread():
    calls = []
    out = timing.time_fn(lambda: calls.append(1), warmup=2, repeats=5, device="cpu")
    assert len(calls) == 7 and len(out["times"]) == 5
    assert out["min"] <= out["median"] <= out["max"]


def test_time_fn_refuses_no_repeats():
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        timing.time_fn(lambda: None, repeats=0)


def test_bench_and_device_use_the_same_discipline():
    assert bench.time_fn is timing.time_fn and device.synchronize is timing.synchronize
    timing.synchronize()  # no GPU: nothing to wait for, and no error
    timing.synchronize("cpu")
