"""Knowledge distillation: train a small *student* on a bigger *teacher*'s soft targets.

Notebook 06b builds the loss from scratch; this is the same loss for reuse (notebook 07's stacks):

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

The temperature ``T`` softens both distributions so that the teacher's ranking of the *wrong* tokens
(which ones are nearly right) reaches the student; the ``T^2`` keeps the soft term's gradients the same
size whatever ``T`` (Hinton et al., 2015). ``alpha=0`` is plain training on the data.

``loss_fn(teacher, ...)`` plugs into ``helpers.train.train(..., loss_fn=...)``:

    train.train(student, train_ids, val_ids, cfg, loss_fn=distill.loss_fn(teacher, temperature=2.0))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """The distillation loss for logits of shape (..., vocab); ``labels`` (...) are needed when ``alpha < 1``.

    The KL term is averaged over tokens (each position is one prediction), as the cross-entropy is.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)} (do they share a tokenizer?)."
        )
    vocab = student_logits.size(-1)
    s = student_logits.float().reshape(-1, vocab)
    t = teacher_logits.float().reshape(-1, vocab)
    loss = s.new_zeros(())
    if alpha > 0:
        log_p_teacher = F.log_softmax(t / temperature, dim=-1)
        log_p_student = F.log_softmax(s / temperature, dim=-1)
        kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1:
        if labels is None:
            raise ValueError("alpha < 1 mixes in the data's cross-entropy: pass the labels.")
        loss = loss + (1 - alpha) * F.cross_entropy(s, labels.reshape(-1))
    return loss


def loss_fn(teacher, *, temperature: float = 2.0, alpha: float = 0.5):
    """A ``loss_fn(model, x, y)`` for ``helpers.train.train`` that distills ``teacher`` into the model trained.

    The teacher runs in eval mode without gradients on the same batch as the student.
    """
    teacher.eval()
    teacher.requires_grad_(False)

    def distill(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(input_ids=x).logits
        student_logits = model(input_ids=x).logits
        return kd_loss(student_logits, teacher_logits, y, temperature=temperature, alpha=alpha)

    return distill
