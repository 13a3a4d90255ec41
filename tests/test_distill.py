"""The distillation loss: its two terms, its limits, and that it moves a student towards its teacher."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import distill, train


def test_alpha_zero_is_plain_cross_entropy():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    y = torch.randint(0, 11, (3, 5))
    expected = F.cross_entropy(s.reshape(-1, 11), y.reshape(-1))
    assert distill.kd_loss(s, t, y, alpha=0.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_term_is_t_squared_kl_and_zero_for_the_teacher_itself():
    torch.manual_seed(1)
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    for temp in (1.0, 2.0, 4.0):
        kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True, reduction="batchmean")
        got = distill.kd_loss(s, t, temperature=temp, alpha=1.0)
        assert got.item() == pytest.approx(temp**2 * kl.item(), rel=1e-5)
        assert distill.kd_loss(t, t, temperature=temp, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_bad_arguments_say_what_is_wrong():
    s = torch.randn(2, 5)
    with pytest.raises(ValueError, match="temperature"):
        distill.kd_loss(s, s, temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        distill.kd_loss(s, s, alpha=1.5)
    with pytest.raises(ValueError, match="labels"):
        distill.kd_loss(s, s, alpha=0.5)
    with pytest.raises(ValueError, match="tokenizer"):
        distill.kd_loss(s, torch.randn(2, 6), alpha=1.0)


def _tiny(seed, n_embd):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=n_embd, n_layer=1, n_head=2))


def test_distilling_brings_the_student_closer_to_the_teacher_than_the_data_does():
    """Same student, same steps and batches: the distilled one ends nearer the teacher's predictions."""
    teacher = _tiny(0, 32).eval()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (4000,), generator=gen)
    cfg = train.TrainConfig(steps=40, batch_size=8, block_size=16, lr=3e-3, warmup_steps=4, eval_every=10**9)
    cfg.keep_best = False
    student = _tiny(1, 16)
    plain, distilled = copy.deepcopy(student), copy.deepcopy(student)
    train.train(plain, tokens, None, cfg, progress=False)
    train.train(distilled, tokens, None, cfg, loss_fn=distill.loss_fn(teacher, alpha=1.0), progress=False)
    x = tokens[:512].view(16, 32)
    with torch.no_grad():
        t = teacher(input_ids=x).logits

        def gap(m):
            return distill.kd_loss(m(input_ids=x).logits, t, temperature=1.0, alpha=1.0).item()

        assert gap(distilled) < gap(plain)
        assert gap(distilled) < gap(student)
