"""helpers.fastgen's batched decode step (tensor-core products for a batch of sequences), against the eager
decoder. Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by ``conftest.py``),
on a tiny GPT-2 shaped so that every mechanism runs: products over several tiles of the summed dimension and of
the outputs, attention over several blocks of the cache, left-padded sequences, more sequences than one tile
(the grid's second axis), and the output layer's argmax split over programs."""

import math
import os

import pytest
import torch

pytest.importorskip("triton", reason="Triton installs with the dev extra on Linux x86-64 only")
if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("the kernels need a CUDA GPU or Triton's interpreter (TRITON_INTERPRET=1)", allow_module_level=True)

from helpers import capability, fastgen  # noqa: E402  (after the interpreter flag: the kernels are defined at import)
from helpers.fastgen import batched_step, generator  # noqa: E402
from helpers.fastgen.triton_step import tl, triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def sharp_model(sharp_gpt2):
    """A 2-layer GPT-2 with sharp attention, 64 wide: products over several tiles of 16."""
    return sharp_gpt2(n_embd=64)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles smaller than the model, so that every loop runs more than once and rows split over programs."""
    monkeypatch.setattr(batched_step, "BLOCK_K", 16)
    monkeypatch.setattr(batched_step, "BLOCK_L", 16)
    monkeypatch.setattr(batched_step, "MAX_BLOCK_B", 16)
    monkeypatch.setattr(batched_step, "BLOCK_N", dict.fromkeys(batched_step.BLOCK_N, 16))
    monkeypatch.setattr(batched_step, "SPLIT_K", {"proj": 2, "out": 4})  # sums in shares, added atomically


def _prompts(batch: int, n: int = 34) -> torch.Tensor:
    return torch.randint(0, 300, (batch, n), generator=torch.Generator().manual_seed(batch)).to(DEV)


@pytest.mark.parametrize("batch", [3, 18])  # 18: two tiles of 16 sequences
def test_the_batched_step_generates_the_eager_decoders_tokens(sharp_model, small_tiles, batch):
    ids = _prompts(batch)
    fast = fastgen.FastGPT2(sharp_model, kernels=True)
    got = fast.generate(ids, 4)  # 38 positions: attention runs over 3 blocks of 16
    assert isinstance(fast.greedy_step(), batched_step.BatchedStep)
    assert torch.equal(got, fastgen.FastGPT2(sharp_model, kernels=False).generate(ids, 4))


def test_left_padded_sequences_get_the_eager_decoders_tokens(sharp_model, small_tiles):
    ids = _prompts(4, 12)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # the second prompt is 3 tokens shorter, padded on the left
    mask[3, :6] = 0
    got = fastgen.FastGPT2(sharp_model, kernels=True).generate(ids, 6, attention_mask=mask)
    assert torch.equal(got, fastgen.FastGPT2(sharp_model, kernels=False).generate(ids, 6, attention_mask=mask))


def test_one_step_gives_the_eager_residual(sharp_model, small_tiles):
    decoder = fastgen.Decoder(sharp_model, torch.float32)
    n, b = 20, 3
    prompt = _prompts(b, n)
    decoder.setup_caches(b, 40)
    decoder(prompt, decoder.arange[:n])
    tok = torch.tensor([[7], [8], [9]], device=DEV)
    pos, out = torch.tensor([n], device=DEV), torch.zeros(b, 40, dtype=torch.long, device=DEV)
    step = batched_step.BatchedStep(decoder, tok.clone(), pos, out)
    step()
    hidden = decoder.hidden(tok, decoder.arange[n : n + 1])[:, -1]  # (B, C) the eager step, same tokens
    torch.testing.assert_close(step.x, hidden, rtol=1e-4, atol=1e-4)
    logits = decoder.head(decoder.ln_f(hidden))  # (B, V)
    assert torch.equal(out[:, n + 1], logits.argmax(-1)) and torch.equal(step.tok[:, 0], logits.argmax(-1))
    assert pos.item() == n + 1


def test_an_int8_cache_is_refused(sharp_model):
    decoder = fastgen.Decoder(sharp_model, torch.float32)
    decoder.kv_int8 = True
    decoder.setup_caches(2, 16)
    z = torch.zeros(2, 1, dtype=torch.long, device=DEV)
    with pytest.raises(ValueError, match="float KV cache"):
        batched_step.BatchedStep(decoder, z, torch.zeros(1, dtype=torch.long, device=DEV), z)


def test_batches_take_the_batched_step_when_asked(sharp_model):
    assert fastgen.FastGPT2(sharp_model, kernels=True).batched_upto == math.inf
    assert fastgen.FastGPT2(sharp_model, kernels=False).batched_upto == 0


@pytest.mark.skipif(
    DEV != "cuda" or not capability.triton_step(capability.capability(torch.device(DEV))),
    reason='kernels="auto" runs kernels only on GPUs where the Triton step was checked',
)
def test_auto_takes_the_batched_step_up_to_batched_auto_in_16_bit_weights(sharp_model):
    fast = fastgen.FastGPT2(sharp_model, kernels="auto", graph_steps=4, dtype=torch.bfloat16)
    assert fast.batched_upto == generator.BATCHED_AUTO
    for batch, step in [(generator.BATCHED_AUTO, "BatchedStep"), (generator.BATCHED_AUTO + 1, "ModelStep")]:
        fast._allocate(batch, 16)
        assert type(fast.greedy_step()).__name__ == step
    assert fastgen.FastGPT2(sharp_model, kernels="auto", graph_steps=4).batched_upto == 0  # fp32: not timed


@pytest.mark.parametrize(("batch", "step"), [(2, "BatchedStep"), (3, "ModelStep")])
def test_batches_past_batched_upto_take_the_models_step(sharp_model, batch, step):
    fast = fastgen.FastGPT2(sharp_model, kernels=True, compile=False)
    fast.batched_upto = 2  # as kernels="auto" sets it (from BATCHED_AUTO) on a GPU in bf16 or fp16
    fast._allocate(batch, 16)
    assert type(fast.greedy_step()).__name__ == step
    ids = torch.randint(0, 300, (batch, 5), generator=torch.Generator().manual_seed(3)).to(DEV)
    eager = fastgen.FastGPT2(sharp_model, kernels=False, compile=False).generate(ids, 6)
    fast._greedy = None  # generate() builds the step it decodes with (none where it decodes one token at a time)
    assert torch.equal(fast.generate(ids, 6), eager)  # either way, the eager decoder's tokens
    assert type(fast._greedy).__name__ == ("BatchedStep" if batch <= 2 else "NoneType")


def test_a_sequence_that_sees_no_position_yet_gets_finite_values_and_a_real_token(sharp_model, small_tiles):
    """CUDA graphs' warm-up runs steps from position 0 while a padded sequence's first real token lies later:
    its attention sees no position. That must not make NaNs (0 / 0) or a token outside the vocabulary."""
    decoder = fastgen.Decoder(sharp_model, torch.float32)
    decoder.setup_caches(2, 40)
    decoder.pad.copy_(torch.tensor([0, 3], device=DEV))  # the second sequence starts at position 3
    tok, pos = torch.tensor([[7], [8]], device=DEV), torch.tensor([0], device=DEV)
    step = batched_step.BatchedStep(decoder, tok, pos, torch.zeros(2, 40, dtype=torch.long, device=DEV))
    step()
    assert torch.isfinite(step.x).all() and torch.isfinite(step.att).all()
    assert 0 <= int(step.tok.min()) and int(step.tok.max()) < sharp_model.config.vocab_size


def test_sums_split_into_whole_tiles_or_not_at_all(monkeypatch):
    monkeypatch.setattr(batched_step, "SPLIT_K", {"proj": 3, "out": 6})
    monkeypatch.setattr(batched_step, "BLOCK_K", 64)
    assert batched_step.k_share("proj", 768) == 256  # GPT-2's attention output: 3 shares of 4 tiles
    assert batched_step.k_share("out", 3072) == 512  # the MLP's output: 6 shares of 8 tiles
    assert batched_step.k_share("proj", 64 * 4) == 64 * 4  # 4 tiles do not split 3 ways: one program sums all
    assert batched_step.k_share("qkv", 768) == 768  # a product that is not split
    assert batched_step.k_share("out", 6 * 32) == 6 * 32  # 6 shares of 32 values: not whole tiles of 64


@pytest.mark.skipif(DEV == "cuda", reason="records the prefetches in the interpreter; a compiled kernel issues them")
def test_the_prefetches_ask_for_every_weight_the_step_reads(sharp_model, small_tiles, monkeypatch, interpreted):
    """The prefetch instruction cannot run in the interpreter: record what each program would ask for (rows and
    a share of the summed dimension of one weight) and check that, together, they cover every value of every
    product's weight (the shares of split sums included) and ask for nothing outside them. (This checks what the
    kernel asks for; the next test checks the addresses ``_tile_lines`` makes of it; and the interpreter runs
    programs one at a time, so only a GPU run can show a race between the shares' atomic adds.)"""
    asked = {}

    def number(value) -> int:
        return int(interpreted(value).item())

    def record(w_address, outs, N, k_lo, K, K_SHARE, ES, LINES):
        rows = interpreted(outs).clip(max=number(N) - 1)
        lo = number(k_lo)
        asked.setdefault(number(w_address), []).append((rows, lo, lo + number(K_SHARE)))

    monkeypatch.setattr(batched_step, "_prefetch_tile", record)
    decoder = fastgen.Decoder(sharp_model, torch.float32)
    decoder.setup_caches(3, 40)
    tok, pos = torch.tensor([[7], [8], [9]], device=DEV), torch.tensor([20], device=DEV)
    step = batched_step.BatchedStep(decoder, tok, pos, torch.zeros(3, 40, dtype=torch.long, device=DEV))
    step.on_gpu = True  # as on a GPU: the kernels are launched with PREFETCH on
    step()
    weights = [decoder.head.weight] + [
        getattr(block, name).weight for block in decoder.blocks for name in ("qkv", "proj", "fc", "out")
    ]
    assert set(asked) == {w.data_ptr() for w in weights}
    for w in weights:
        seen = torch.zeros(w.shape, dtype=torch.bool)
        for rows, lo, hi in asked[w.data_ptr()]:
            assert 0 <= lo < hi <= w.shape[1]
            seen[torch.as_tensor(rows).long(), lo:hi] = True
        assert seen.all(), f"a weight of shape {tuple(w.shape)} is read but not all asked for"


@triton.jit
def _lines_kernel(out_ptr, n_rows, k_lo, N, K: tl.constexpr, K_SHARE: tl.constexpr, ES: tl.constexpr,
                  LINES: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """Store ``_tile_lines``'s addresses (of a weight at byte 0) for rows 0..n_rows (masked past them)."""
    outs = tl.arange(0, BLOCK_N)
    lines = batched_step._tile_lines(0, outs, N, k_lo, K, K_SHARE, ES, LINES)  # (BLOCK_N, LINES)
    tl.store(out_ptr + outs[:, None] * LINES + tl.arange(0, LINES)[None, :], lines, mask=(outs < n_rows)[:, None])


@pytest.mark.parametrize(("k_lo", "k_share", "es"), [(0, 64, 2), (64, 64, 2), (128, 96, 2), (0, 192, 2), (32, 32, 4)])
def test_the_prefetch_addresses_fall_in_every_line_of_the_share_and_nowhere_else(k_lo, k_share, es):
    """For each row, the addresses lie in the bytes of the row's share, and every 128-byte line of the share
    gets one (the extra lanes of a power-of-2 count repeat the last byte). Rows past N ask for the last row."""
    n, k, block_n = 5, 256, 8
    lines = triton.next_power_of_2(triton.cdiv(k_share * es, 128))
    out = torch.full((block_n, lines), -1, dtype=torch.int64, device=DEV)
    _lines_kernel[(1,)](out, block_n, k_lo, n, K=k, K_SHARE=k_share, ES=es, LINES=lines, BLOCK_N=block_n)
    for r in range(block_n):
        row = min(r, n - 1)
        lo, hi = (row * k + k_lo) * es, (row * k + k_lo + k_share) * es  # the share's bytes
        got = out[r].tolist()
        assert all(lo <= a < hi for a in got), f"row {r}: an address outside bytes {lo}..{hi}"
        assert {a // 128 for a in got} == set(range(lo // 128, (hi - 1) // 128 + 1)), f"row {r}: a line missed"
