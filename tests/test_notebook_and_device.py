import pytest
import torch

from helpers import device, notebook


def test_quick_mode_reads_the_environment(monkeypatch):
    monkeypatch.setenv("WORKBOOK_QUICK", "1")
    assert notebook.is_quick() and notebook.pick(100, 3) == 3
    monkeypatch.setenv("WORKBOOK_QUICK", "0")
    assert not notebook.is_quick() and notebook.pick(100, 3) == 100


def test_pick_defaults_to_what_exists(monkeypatch):
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.pick().type == expected
    monkeypatch.setenv("WORKBOOK_DEVICE", "cpu")
    assert device.pick() == torch.device("cpu")


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="cpu, cuda, mps"):
        device.pick("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_gpu_only_steps_explain_and_skip_on_cpu(capsys):
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        device.pick("cuda")
    assert device.gpu_only("CUDA graphs") is False
    assert "Skipped on this machine: CUDA graphs needs a CUDA GPU" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        device.require_cuda("fp8 matmul")


def test_describe_names_versions_and_memory():
    info = device.describe("cpu")
    assert info["device"].startswith("cpu: ")
    assert info["torch"] == torch.__version__
    assert info["RAM"].endswith("GiB")


def test_bandwidth_is_measured_once_and_cached(tmp_path):
    bw = device.bandwidth("cpu", mib=16, repeats=3)
    assert 1e8 < bw < 1e13, bw  # between 0.1 GB/s and 10 TB/s
    cache = tmp_path / "cache" / "measurements.json"
    assert cache.exists()
    assert device.bandwidth("cpu") == bw  # read back from the cache, not measured again


def test_matmul_flops_is_measured_and_cached(tmp_path):
    flops = device.matmul_flops("cpu", n=256, repeats=2)
    assert 1e8 < flops < 1e15, flops
    assert device.matmul_flops("cpu", n=256) == flops
    assert device.matmul_flops("cpu", n=128, repeats=1) != flops  # another size is another measurement
