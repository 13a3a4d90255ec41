"""helpers.capability: the GPU-dependent choices for the GPUs learners get, with faked capabilities."""

import pytest
import torch

from helpers import capability as cap

# (capability, bf16?, fp8?, 2:4?, PDL?, Triton step?)
GPUS = {
    "T4": ((7, 5), False, False, False, False, False),
    "A100": ((8, 0), True, False, True, False, False),
    "L4": ((8, 9), True, True, True, False, False),
    "H100": ((9, 0), True, True, True, True, True),
}


@pytest.mark.parametrize("gpu", GPUS)
def test_choices_follow_the_compute_capability(gpu, monkeypatch):
    cc, bf16, fp8, sparse, pdl, step = GPUS[gpu]
    monkeypatch.setenv("WORKBOOK_FAKE_CAPABILITY", f"{cc[0]}.{cc[1]}")
    assert cap.capability() == cc
    assert cap.half_dtype(cc).value == (torch.bfloat16 if bf16 else torch.float16)
    assert bool(cap.fp8(cc)) is fp8 and bool(cap.sparse_24(cc)) is sparse
    assert bool(cap.pdl(cc)) is pdl and bool(cap.triton_step(cc)) is step
    lines = cap.summary()
    assert len(lines) == 6 and all("(" in line for line in lines)  # every choice says why


def test_a_cpu_gets_the_cpu_paths_and_says_why(monkeypatch):
    monkeypatch.delenv("WORKBOOK_FAKE_CAPABILITY", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cap.capability() is None
    assert cap.half_dtype(None).value is None and "CPU" in cap.half_dtype(None).why
    assert not cap.fp8(None) and not cap.triton_step(None)


def test_a_bad_fake_capability_says_how_to_write_it(monkeypatch):
    monkeypatch.setenv("WORKBOOK_FAKE_CAPABILITY", "hopper")
    with pytest.raises(ValueError, match="MAJOR.MINOR"):
        cap.capability()
