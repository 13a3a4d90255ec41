"""Shared fixtures: a tiny GPT-2 for fast tests, the pocket tokenizer, an isolated result log, and a count of
greedy tokens that quantized decoders share with fp32."""

import os

import pytest
import torch

if not torch.cuda.is_available():  # the fast decoder's Triton kernels then run in Triton's interpreter; the flag
    os.environ.setdefault("TRITON_INTERPRET", "1")  # is read when helpers.fastgen defines them, so it is set first
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import models, results


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own result log and cache folder, and no network."""
    monkeypatch.setenv("WORKBOOK_RESULTS", str(tmp_path / "results.jsonl"))
    monkeypatch.setenv("WORKBOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("WORKBOOK_HUB_MIRROR", raising=False)
    monkeypatch.delenv("WORKBOOK_DEVICE", raising=False)
    monkeypatch.delenv("WORKBOOK_RECORD", raising=False)  # tests never write the committed recorded runs


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models.folder("pocket"))
    tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def recorded_dir(tmp_path, monkeypatch):
    """results/recorded/ (and the repository root it is shown relative to) moved into a temporary folder."""
    monkeypatch.setattr(results, "RECORDED", tmp_path / "recorded")
    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(results, "_started", set())
    return tmp_path / "recorded"


def _same_greedy_tokens(tok, reference, *candidates, prompts: int = 4, new: int = 24):
    """On the first ``prompts`` benchmark prompts (their first 32 tokens), how many of ``new`` greedy tokens each
    candidate shares with ``reference``; each decoder is a function ``(ids, n) -> (1, prompt + n) ids``. Returns
    the counts, one per candidate, and the number of tokens compared."""
    from helpers import bench

    same, total = [0] * len(candidates), 0
    for text in bench.prompts()[:prompts]:
        ids = tok(text, return_tensors="pt")["input_ids"][:, :32]
        n = ids.shape[1]
        ref = reference(ids, new)[:, n:]
        for j, decode in enumerate(candidates):
            same[j] += int((decode(ids, new)[:, n:] == ref).sum())
        total += ref.numel()
    return same, total


@pytest.fixture
def same_greedy_tokens():
    """``_same_greedy_tokens``: how often quantized decoders choose fp32's greedy tokens (tests of int8 paths)."""
    return _same_greedy_tokens


def _sharp_gpt2(n_embd: int = 32, n_head: int = 2) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 (300 tokens, 64 positions) whose attention is sharp, so that blocks of a KV cache have
    different running maxima (the online softmax's rescale runs), with LayerNorm parameters away from 1 and 0;
    on the GPU when there is one, where the hand-written steps' kernels then run (else in Triton's interpreter)."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=300, n_positions=64, n_embd=n_embd, n_layer=2, n_head=n_head)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(10)
    return model.to("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def sharp_gpt2():
    """``_sharp_gpt2``: the small GPT-2 the tests of the hand-written decode steps compare with the eager one."""
    return _sharp_gpt2


@pytest.fixture
def interpreted():
    """A function turning a value of Triton's interpreter (a scalar or a block; a plain number passes through)
    into a numpy array, for tests that record what a kernel passes to a function they replace."""

    def values(value):
        data = getattr(getattr(value, "handle", value), "data", value)
        return torch.as_tensor(data).numpy()

    return values
