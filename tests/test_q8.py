"""q8_0 weights and the workbook's CPU kernel: the format, the kernel against its PyTorch reference, the layer,
the fast decoder's q8_0 path (quality against fp32 and against dynamic int8) and the errors."""

import platform
import warnings

import pytest
import torch
from torch import nn

from helpers import data, evaluate, fastgen, models, q8

needs_kernel = pytest.mark.skipif(
    not q8.available()[0], reason=f"the q8_0 kernel cannot build here: {q8.available()[1]}"
)


def test_q8_0_blocks_hold_32_values_and_one_fp16_scale():
    torch.manual_seed(0)
    w = torch.randn(6, 70)  # 70 inputs: three blocks, the last padded with zeros
    codes, scale = q8.quantize_q8_0(w)
    assert codes.shape == (6, 96) and codes.dtype == torch.int8
    assert scale.shape == (6, 3) and scale.dtype == torch.float16
    assert (codes[:, 70:] == 0).all()
    assert codes.abs().max() == 127  # each block's largest value maps to +-127
    back = q8.dequantize_q8_0(codes, scale, 70)
    bound = scale.float().repeat_interleave(32, 1)[:, :70] * 0.51  # half a step, and fp16's rounding of the scale
    assert ((back - w).abs() <= bound + 1e-6).all()
    zero_codes, zero_scale = q8.quantize_q8_0(torch.zeros(2, 32))
    assert (zero_codes == 0).all() and (zero_scale == 0).all()


def test_interleave_puts_four_rows_of_a_block_side_by_side():
    codes = torch.arange(6 * 64, dtype=torch.int32).view(6, 64).to(torch.int8)
    scale = torch.arange(12, dtype=torch.float16).view(6, 2)
    ic, isc = q8.interleave(codes, scale)
    assert ic.shape == (8, 64) and isc.shape == (8, 2)  # 6 rows padded to 8
    flat = ic.view(-1)
    assert torch.equal(flat[:32], codes[0, :32]) and torch.equal(flat[32:64], codes[1, :32])
    assert torch.equal(flat[128:160], codes[0, 32:])  # then block 1 of the same four rows
    assert torch.equal(isc.view(-1)[:4], scale[:4, 0])
    assert (ic.view(2, 2, 4, 32)[1, :, 2:] == 0).all()  # group 1 (rows 4-7): rows 6 and 7 are padding
    assert torch.equal(ic.view(2, 2, 4, 32)[1, 1, 1], codes[5, 32:])


def test_the_reference_is_close_to_the_float_product():
    torch.manual_seed(1)
    w, x = torch.randn(40, 96), torch.randn(3, 96)
    codes, scale = q8.quantize_q8_0(w)
    exact = x @ w.T
    err = (q8.matmul_reference(x, codes, scale) - exact).norm() / exact.norm()
    assert err < 0.02


@needs_kernel
@pytest.mark.parametrize("n,k,m", [(2304, 768, 1), (10, 120, 1), (7, 480, 5), (768, 3072, 3), (1, 32, 2)])
def test_the_kernel_computes_what_the_reference_does(n, k, m):
    torch.manual_seed(n + k + m)
    w, x = torch.randn(n, k), torch.randn(m, k)
    codes, scale = q8.quantize_q8_0(w)
    ref = q8.matmul_reference(x, codes, scale)
    out = q8.matmul(x, *q8.interleave(codes, scale), n)
    assert out.shape == (m, n)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@needs_kernel
def test_the_kernel_names_its_instruction_sets_and_handles_a_zero_input():
    assert q8.isa() in ("AVX-512 VNNI", "AVX2 with VNNI", "AVX2", "portable C++")
    codes, scale = q8.quantize_q8_0(torch.randn(8, 64))
    assert (q8.matmul(torch.zeros(2, 64), *q8.interleave(codes, scale), 8) == 0).all()


@needs_kernel
def test_q8linear_is_a_linear_layer():
    torch.manual_seed(2)
    lin = nn.Linear(100, 30)
    layer = q8.Q8Linear.from_float(lin)
    x = torch.randn(2, 3, 100)
    y = layer(x)
    assert y.shape == (2, 3, 30)
    assert ((y - lin(x)).norm() / lin(x).norm()) < 0.02
    assert layer.quantized_bytes() == 32 * 128 + 32 * 4 * 2  # rows padded to 32, inputs to 128, fp16 scales
    with pytest.raises(TypeError, match="float32"):
        layer(x.bfloat16())


@needs_kernel
def test_a_compiled_step_calls_the_kernel_and_gives_the_same_tokens(tiny_model, tokenizer):
    ids = tokenizer("def main():", return_tensors="pt")["input_ids"]
    eager = fastgen.FastGPT2(tiny_model, int8="q8_0", compile=False, kernels=False).generate(ids, 12)
    compiled = fastgen.FastGPT2(tiny_model, int8="q8_0", compile=True, kernels=False).generate(ids, 12)
    assert torch.equal(eager, compiled)


@pytest.fixture(scope="module")
def pocket():
    model, tok = models.load("pocket", device="cpu", verbose=False)
    return model, tok


@needs_kernel
def test_q8_0_perplexity_is_within_one_percent_of_fp32(pocket):
    model, tok = pocket
    tokens = data.eval_tokens(tok, budget=3_000)  # the held-out split's first 3,000 tokens, in any mode
    q = q8.q8_0_model(model)
    assert isinstance(q.lm_head, q8.Q8Linear) and isinstance(q.transformer.h[0].mlp.c_fc, q8.Q8Linear)
    fp32, ppl = evaluate.standard_perplexity(model, tokens), evaluate.standard_perplexity(q, tokens)
    assert abs(ppl / fp32 - 1) < 0.01, f"q8_0 perplexity {ppl:.3f} against fp32 {fp32:.3f}"


@needs_kernel
def test_q8_0_decoding_agrees_with_fp32_at_least_as_well_as_dynamic_int8(pocket, same_greedy_tokens):
    model, tok = pocket
    fp32, dyn, q = fastgen.FastGPT2(model), fastgen.FastGPT2(model, int8=True), fastgen.FastGPT2(model, int8="q8_0")
    assert q.weight_bytes() < 0.3 * fp32.weight_bytes()
    (q_same, dyn_same), total = same_greedy_tokens(tok, fp32.generate, q.generate, dyn.generate)
    assert q_same >= dyn_same, f"q8_0 agreed on {q_same} of {total} tokens, dynamic int8 on {dyn_same}"


def test_clear_errors_without_a_compiler_or_on_a_gpu_request(monkeypatch, tiny_model):
    monkeypatch.setattr(q8, "_ext", None)
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    ok, why = q8.available()
    assert not ok and "compiler" in why
    with pytest.raises(RuntimeError, match="cannot be built here"):
        q8.kernel()
    with pytest.raises(ValueError, match="int8 takes"):
        fastgen.FastGPT2(tiny_model, int8="q4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="float32"):
            fastgen.FastGPT2(tiny_model, int8="q8_0", dtype=torch.bfloat16)


@needs_kernel
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the variants are x86 builds")
@pytest.mark.parametrize("variant,isa", [("avx2", "AVX2"), ("portable", "portable C++"), ("no_prefetch", None)])
def test_the_kernels_other_paths_compute_the_same(variant, isa):
    """The AVX2 path (CPUs without AVX-512, such as AMD's Zen 3) and the plain C++ one (Arm, older CPUs), built
    here with those instructions turned off, and this CPU's path without software prefetch, give what the
    reference gives."""
    ext = q8.kernel(variant=variant)
    assert ext.q8_isa().startswith(isa or q8.isa())
    torch.manual_seed(3)
    for n, k, m in [(2304, 768, 1), (7, 480, 3)]:
        w, x = torch.randn(n, k), torch.randn(m, k)
        codes, scale = q8.quantize_q8_0(w)
        ref = q8.matmul_reference(x, codes, scale)
        out = ext.q8_matmul(x, *q8.interleave(codes, scale), n)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    with pytest.raises(ValueError, match="variant takes"):
        q8.kernel(variant="avx9")


def test_a_first_build_is_timed_in_a_fresh_folder_under_a_new_name(monkeypatch, tmp_path):
    """first_build_seconds builds with nothing cached: its own temporary folder and operator namespace, each
    call a new one (notebook 03c runs the real build under nbval)."""
    calls = []

    def fake_load(variant, verbose, root=None, tag=""):
        calls.append((variant, root, tag, root.exists()))
        return None, 12.5, True

    monkeypatch.setattr(q8, "_load", fake_load)
    monkeypatch.setattr(q8, "available", lambda: (True, "test"))
    assert q8.first_build_seconds() == 12.5
    q8.first_build_seconds()
    (v1, root1, tag1, existed1), (_, root2, tag2, _) = calls
    assert v1 is None and existed1 and not root1.exists()  # a temporary folder, deleted afterwards
    assert root1 != q8.CACHE and root1 != root2 and tag1 and tag1 != tag2
