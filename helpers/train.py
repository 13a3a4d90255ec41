"""A compact training loop for causal language models, used to make the pocket models and,
in later lessons, for recovery fine-tuning and distillation.

AdamW, linear warm-up then cosine decay, bf16 autocast on a GPU, gradient clipping,
``tqdm.auto`` progress, periodic evaluation on held-out tokens, and the best weights (by
validation loss) kept and saved with ``save_pretrained``.

Batches are random windows of ``block_size + 1`` tokens cut from one long token stream.
``loss_fn`` lets a lesson replace the plain next-token loss (e.g. with a distillation loss).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    block_size: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 20
    seed: int = 0
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, none elsewhere; or "bf16", "fp16", "none"
    compile: bool = False
    keep_best: bool = True


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def get_batch(
    tokens: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the token stream: inputs and the same windows shifted by one."""
    if tokens.numel() <= block_size + 1:
        raise ValueError(f"Need more than {block_size + 1} tokens to cut windows, got {tokens.numel()}.")
    starts = torch.randint(0, tokens.numel() - block_size - 1, (batch_size,), generator=generator)
    window = torch.stack([tokens[s : s + block_size + 1] for s in starts.tolist()]).long()
    window = window.to(device, non_blocking=True)
    return window[:, :-1], window[:, 1:]


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain next-token cross-entropy."""
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


def _autocast(device: torch.device, amp: str):
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate_loss(model, tokens: torch.Tensor, cfg: TrainConfig, device: torch.device) -> float:
    """Mean loss over ``cfg.eval_batches`` fixed windows of ``tokens`` (same windows every call)."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = get_batch(tokens, cfg.batch_size, cfg.block_size, gen, device)
        with _autocast(device, cfg.amp):
            losses.append(lm_loss(model, x, y).item())
    model.train()
    return sum(losses) / len(losses)


def train(
    model,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor | None,
    cfg: TrainConfig,
    *,
    loss_fn=None,
    out_dir: str | Path | None = None,
    tokenizer=None,
    progress: bool = True,
) -> dict:
    """Train ``model`` in place on ``train_tokens``; return the history and the best validation loss.

    With ``cfg.keep_best`` the weights with the lowest validation loss are restored at the end.
    With ``out_dir`` the final model (and ``tokenizer``) are saved there with ``save_pretrained``.
    """
    device = next(model.parameters()).device
    loss_fn = loss_fn or lm_loss
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
        fused=device.type == "cuda",
    )
    step_fn = torch.compile(model) if cfg.compile else model
    history: list[dict] = []
    best = {"val_loss": float("inf"), "step": -1, "state": None}
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="training", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = get_batch(train_tokens, cfg.batch_size, cfg.block_size, gen, device)
        with _autocast(device, cfg.amp):
            loss = loss_fn(step_fn, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        last = step == cfg.steps - 1
        if (step + 1) % cfg.eval_every == 0 or last:
            row = {
                "step": step + 1,
                "train_loss": loss.item(),
                "grad_norm": float(grad_norm),
                "lr": opt.param_groups[0]["lr"],
                "elapsed_s": time.perf_counter() - t0,
            }
            if val_tokens is not None:
                row["val_loss"] = evaluate_loss(model, val_tokens, cfg, device)
                if cfg.keep_best and row["val_loss"] < best["val_loss"]:
                    best = {"val_loss": row["val_loss"], "step": step + 1, "state": copy.deepcopy(model.state_dict())}
            history.append(row)
            bar.set_postfix({k: round(v, 3) for k, v in row.items() if k in ("train_loss", "val_loss")})
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    result = {
        "history": history,
        "best_val_loss": best["val_loss"],
        "best_step": best["step"],
        "wall_s": time.perf_counter() - t0,
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.block_size,
        "config": asdict(cfg),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        model.save_pretrained(out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
    return result
