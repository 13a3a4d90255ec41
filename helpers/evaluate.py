"""Quality measures that every lesson uses the same way.

- ``perplexity``: sliding-window perplexity with a stride over a fixed token budget, so two
  techniques measured on the same tokens are comparable.
- ``greedy_agreement``: how often a changed model picks the same next token as the baseline,
  teacher-forced along the baseline's own greedy continuation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def _windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored offset) of each window; every token after the first is scored exactly once.

    The first window scores its tokens 1..context-1; each later window scores the next ``stride``
    tokens (at most ``context - 1``, since a scored token needs one token before it in its window).
    """
    out = []
    start = 1  # the first token has nothing before it to be predicted from
    end = min(context, n_tokens)
    while start < n_tokens:
        begin = max(0, end - context)
        out.append((begin, end, start - begin))
        start = end
        end = min(start + min(stride, context - 1), n_tokens)
    return out


@torch.no_grad()
def perplexity(
    model,
    tokens: torch.Tensor,
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> float:
    """Perplexity of ``model`` on a 1-D token tensor, with windows of ``context`` tokens moved by ``stride``.

    Each window scores only the tokens that no earlier window scored, so each token is predicted
    with at least ``context - stride`` tokens of history (except at the very start).
    ``context`` defaults to the model's maximum (``n_positions``), ``stride`` to half of it.
    """
    if tokens.dim() != 1 or tokens.numel() < 2:
        raise ValueError("perplexity() needs a 1-D tensor of at least 2 token ids.")
    context = context or model.config.n_positions
    if context > model.config.n_positions:
        raise ValueError(f"context={context} is longer than the model's {model.config.n_positions} positions.")
    if context < 2:
        raise ValueError(f"context must be at least 2 (a scored token needs one before it); got {context}.")
    stride = stride or context // 2
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..{context}, got {stride}.")
    device = next(model.parameters()).device
    windows = _windows(tokens.numel(), context, stride)
    nll, count = 0.0, 0
    bar = tqdm(range(0, len(windows), batch_size), desc="perplexity", disable=not progress, leave=False)
    for i in bar:
        group = windows[i : i + batch_size]
        length = max(end - begin for begin, end, _ in group)
        ids = torch.zeros(len(group), length, dtype=torch.long)
        labels = torch.full((len(group), length), -100, dtype=torch.long)
        for row, (begin, end, first) in enumerate(group):
            chunk = tokens[begin:end]
            ids[row, : chunk.numel()] = chunk
            labels[row, first : chunk.numel()] = chunk[first:]
        ids, labels = ids.to(device), labels.to(device)
        logits = model(input_ids=ids).logits.float()
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        nll += loss.item()
        count += int((labels[:, 1:] != -100).sum())
    return math.exp(nll / count)


# The workbook's one perplexity protocol: every notebook that scores the pocket model uses it, so that
# its perplexity is the same figure wherever it appears (the model card's figure covers the whole split).
STANDARD_TOKENS = (20_000, 1_500)  # (full mode, quick mode): the first tokens of the held-out split
STANDARD_CONTEXT, STANDARD_STRIDE = 256, 128  # sliding windows of 256 tokens, moved by 128


def standard_protocol() -> str:
    """The standard perplexity protocol in words, for tables and printouts."""
    from .notebook import pick

    return f"first {pick(*STANDARD_TOKENS):,} held-out tokens, windows of {STANDARD_CONTEXT} moved by {STANDARD_STRIDE}"


def standard_tokens(tokenizer) -> torch.Tensor:
    """The held-out tokens of the standard protocol (``STANDARD_TOKENS``, fewer in quick mode)."""
    from .data import eval_tokens
    from .notebook import pick

    return eval_tokens(tokenizer, budget=pick(*STANDARD_TOKENS))


def standard_perplexity(model, tokens: torch.Tensor, progress: bool = False) -> float:
    """Perplexity on ``standard_tokens()`` with the standard windows: the figure every notebook compares."""
    context = min(STANDARD_CONTEXT, model.config.n_positions)
    return perplexity(model, tokens, context=context, stride=min(STANDARD_STRIDE, context), progress=progress)


@torch.no_grad()
def greedy_agreement(baseline, candidate, tokenizer, prompts: list[str], new_tokens: int = 32) -> float:
    """Fraction of next-token choices where ``candidate`` agrees with ``baseline``.

    The baseline generates ``new_tokens`` greedily from each prompt; the candidate then reads
    the same text (teacher forcing) and we count how often its top token equals the baseline's.
    Unlike comparing two free-running generations, one early disagreement does not poison the rest.
    """
    if not prompts or new_tokens < 1:
        raise ValueError("greedy_agreement needs at least one prompt and new_tokens >= 1.")
    base_dev = next(baseline.parameters()).device
    cand_dev = next(candidate.parameters()).device
    agree = total = 0
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(base_dev)
        out = baseline.generate(
            ids,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        n_prompt = ids.shape[1]
        logits = candidate(input_ids=out.to(cand_dev)).logits
        picks = logits[0, n_prompt - 1 : -1].argmax(-1).cpu()
        agree += int((picks == out[0, n_prompt:].cpu()).sum())
        total += out.shape[1] - n_prompt
    return agree / total


@torch.no_grad()
def cache_perplexity(fast, tokens: torch.Tensor, context: int | None = None) -> float:
    """Perplexity of a ``fastgen.FastGPT2`` on a 1-D token tensor, every position reading keys and values back
    from the decoder's own KV cache (an int8 cache's rounding included), in windows of ``context`` positions.

    Each window is one prefill through the cache: position t attends to positions 0..t as the cache returns
    them, as a decode step would. Windows do not overlap, so the first tokens of each have little history."""
    decoder = fast.model
    context = min(context or decoder.config.n_positions, decoder.config.n_positions)
    if tokens.dim() != 1 or tokens.numel() < 2:
        raise ValueError(f"cache_perplexity takes a 1-D tensor of at least 2 tokens, got shape {tuple(tokens.shape)}.")
    nll, count = 0.0, 0
    for start in range(0, tokens.numel() - 1, context):
        window = tokens[start : start + context].to(fast.device)[None, :]  # (1, T)
        if window.shape[1] < 2:
            break
        decoder.setup_caches(1, context)
        decoder.pad.zero_()
        hidden = decoder.hidden(window, torch.arange(window.shape[1], device=fast.device))  # (1, T, C)
        logits = decoder.head(decoder.ln_f(hidden)).float()[0, :-1]  # (T - 1, V): each position's next token
        nll += F.cross_entropy(logits, window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    fast._decode = fast._greedy = None  # the caches were replaced: FastGPT2 sizes them again when it decodes
    decoder.batch = decoder.length = None
    return math.exp(nll / count)
