"""Speculative decoding from scratch: a small draft model proposes, the target model verifies.

Each round the draft proposes ``k`` tokens one at a time (cheap), and the target scores all of them in
one forward pass (about the price of one decode step, since decoding is bound by reading weights).
- Greedy: keep the drafted tokens up to the first one the target would not have chosen, then add the
  target's own choice there (or a bonus token if all ``k`` matched). The output is exactly the target's
  greedy output, only produced in fewer target passes.
- Sampled: accept drafted token ``x`` with probability ``min(1, p(x) / q(x))`` (``p``: target, ``q``:
  draft); at the first rejection sample from ``max(0, p - q)`` renormalized. The tokens then follow the
  target's distribution exactly (Leviathan et al., 2023; Chen et al., 2023).

Both models keep a KV cache, cut back to the accepted tokens after every round. Batch size 1.

    out, stats = speculative.generate(target, draft, input_ids, max_new_tokens=64, k=4)
    stats["acceptance"], stats["tokens_per_pass"]
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache


def _truncate(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions of a transformers cache. ``crop(-n)`` removes the last n
    positions in every transformers 5 release (its positive argument changed meaning between them)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def cache_arg(model) -> str:
    """The name under which ``model.forward`` takes a KV cache: ``cache`` in newer transformers 5 releases,
    ``past_key_values`` (deprecated there) in older ones."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _logits(model, cache: DynamicCache, arg: str, seq: torch.Tensor, extra: torch.Tensor | None = None):
    """Feed the tokens of ``seq`` (1, n) not yet in ``cache`` (plus ``extra``), passing the cache as ``arg``;
    return their logits (m, vocab)."""
    new = seq[:, cache.get_seq_length() :]
    if extra is not None:
        new = torch.cat([new, extra], dim=1)
    return model(input_ids=new, use_cache=True, **{arg: cache}).logits[0].float()


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.softmax(logits / temperature, dim=-1)


@torch.no_grad()
def generate(
    target,
    draft,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    k: int = 4,
    temperature: float = 0.0,
    seed: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """Generate ``max_new_tokens`` tokens after ``input_ids`` (1, T) with ``draft`` proposing ``k`` per round.

    Returns the tokens (1, T + max_new_tokens) and statistics: rounds (target passes), drafted and
    accepted tokens, ``acceptance`` (accepted / drafted) and ``tokens_per_pass`` (new tokens per target pass).
    ``temperature=0`` is greedy (identical to the target's greedy decoding); otherwise sampling.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(
            f"speculative.generate decodes one sequence: input_ids must be (1, T), got {tuple(input_ids.shape)}."
        )
    if k < 1 or max_new_tokens < 1 or temperature < 0:
        raise ValueError("Need k >= 1, max_new_tokens >= 1 and temperature >= 0.")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError("The draft must share the target's tokenizer (same vocabulary size).")
    device = next(target.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(torch.seed() if seed is None else seed)
    seq = input_ids.to(device)
    goal = seq.shape[1] + max_new_tokens
    t_cache, d_cache = DynamicCache(), DynamicCache()
    t_arg, d_arg = cache_arg(target), cache_arg(draft)  # looked up once, not at every forward pass
    # prefill both caches with all but the last prompt token, so each round starts by feeding that one
    if seq.shape[1] > 1:
        _logits(target, t_cache, t_arg, seq[:, :-1])
        _logits(draft, d_cache, d_arg, seq[:, :-1])
    rounds = drafted = accepted = 0
    while seq.shape[1] < goal:
        n = seq.shape[1]
        kk = min(k, goal - n)  # do not draft past the end
        # 1. the draft proposes kk tokens, one at a time
        proposal, q = [], []
        for _ in range(kk):
            logits = _logits(draft, d_cache, d_arg, torch.cat([seq] + proposal, dim=1))[-1]
            if temperature == 0:
                token = logits.argmax().view(1, 1)
            else:
                q.append(_probs(logits, temperature))
                token = torch.multinomial(q[-1], 1, generator=gen).view(1, 1)
            proposal.append(token)
        proposal = torch.cat(proposal, dim=1)
        # 2. the target scores the last accepted token and all proposals in one pass: kk + 1 predictions
        t_logits = _logits(target, t_cache, t_arg, seq, proposal)[-(kk + 1) :]
        # 3. accept a prefix of the proposal, then add one token of the target's own
        if temperature == 0:
            choice = t_logits.argmax(-1)
            match = (choice[:kk] == proposal[0]).long()
            n_ok = int(match.cumprod(0).sum())
            extra = choice[n_ok]
        else:
            p = _probs(t_logits, temperature)
            n_ok = 0
            for i in range(kk):
                x = proposal[0, i]
                if torch.rand((), generator=gen, device=device) < (p[i, x] / q[i][x]).clamp(max=1):
                    n_ok += 1
                    continue
                break
            if n_ok < kk:  # rejected: sample from what the target wants and the draft over-proposed
                residual = (p[n_ok] - q[n_ok]).clamp(min=0)
                extra = torch.multinomial(residual / residual.sum(), 1, generator=gen)[0]
            else:  # all accepted: a bonus token from the target's next distribution
                extra = torch.multinomial(p[kk], 1, generator=gen)[0]
        seq = torch.cat([seq, proposal[:, :n_ok], extra.view(1, 1)], dim=1)
        rounds, drafted, accepted = rounds + 1, drafted + kk, accepted + n_ok
        # 4. forget what the caches hold beyond the accepted tokens
        _truncate(t_cache, n + n_ok)
        _truncate(d_cache, n + n_ok)
    seq = seq[:, :goal]
    stats = {
        "k": k,
        "rounds": rounds,
        "drafted": drafted,
        "accepted": accepted,
        "acceptance": accepted / max(drafted, 1),
        "tokens_per_pass": max_new_tokens / max(rounds, 1),
    }
    return seq, stats


def expected_tokens_per_pass(acceptance: float, k: int) -> float:
    """Tokens per target pass if each drafted token is accepted independently with probability ``acceptance``:
    1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a)."""
    if acceptance >= 1:
        return k + 1.0
    return (1 - acceptance ** (k + 1)) / (1 - acceptance)
