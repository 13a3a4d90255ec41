"""One way to time generation, used by every notebook, so that figures are comparable.

``generation()`` measures, for one model, device, dtype, batch size, prompt length and number
of new tokens:
- time to first token (TTFT): the prefill of the prompt plus the first token;
- time per output token (TPOT) while decoding: (total time - TTFT) / (new tokens - 1);
- decode tokens/s (batch / TPOT) and end-to-end tokens/s;
- peak GPU memory (CUDA) or the process's resident memory (CPU), and the model's size in bytes;
- the speed of light: the bytes one decode step must read (weights + KV cache) over the
  device's measured memory bandwidth, and the fraction of that limit the run reached.

Every figure is the median of ``repeats`` timed runs after ``warmup`` runs, with the GPU
synchronised around each. ``time_fn()`` (from ``helpers.timing``) is the same discipline for any function.
"""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

import torch
from torch import nn

from . import device as devices
from .models import count_params, dtype_name, param_bytes
from .timing import time_fn  # the one timing discipline, also bench.time_fn for the notebooks

PROMPTS_FILE = Path(__file__).resolve().parent.parent / "data" / "prompts.json"


def prompts() -> list[str]:
    """The workbook's own prompts (``data/prompts.json``); the first is the benchmark prompt."""
    return json.loads(PROMPTS_FILE.read_text())["prompts"]


def prompt_ids(tokenizer, length: int, batch: int = 1, device=None) -> torch.Tensor:
    """The benchmark prompt as exactly ``length`` token ids (repeated if short), ``batch`` rows."""
    if length < 1 or batch < 1:
        raise ValueError(f"prompt length and batch must be at least 1; got {length} and {batch}.")
    ids = tokenizer(prompts()[0])["input_ids"]
    if not ids:
        raise ValueError("the tokenizer encodes the benchmark prompt to no tokens: it is empty or broken.")
    while len(ids) < length:
        ids = ids + ids
    row = torch.tensor(ids[:length], dtype=torch.long)
    return row.repeat(batch, 1).to(device or "cpu")


def forward_step(
    model,
    batch: int = 1,
    *,
    compile_mode: str | None = None,
    warmup: int = 3,
    repeats: int = 5,
    inner: int = 10,
    seed: int = 0,
) -> dict:
    """Time one decode-sized forward pass: ``batch`` sequences of one token each, no KV cache.

    This is the part of a decode step that weight formats (quantization, sparsity) change: every
    weight is read once per step whatever the batch, and the math grows with the batch. Attention
    over past tokens is left out, so the figure is an upper bound on a real decode step's speed.

    ``compile_mode`` is ``None`` (eager) or a ``torch.compile`` mode ("default", "reduce-overhead"
    for CUDA graphs, "max-autotune", ...). The first call, compilation included, is timed on its own
    (``first_call_s``); each timed repeat runs ``inner`` steps so that short steps are measurable.
    """
    if batch < 1 or inner < 1:
        raise ValueError(f"batch and inner must be at least 1; got {batch} and {inner}.")
    param = next(model.parameters())
    dev = param.device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), generator=gen).to(dev)

    def forward(x):
        return model(input_ids=x, use_cache=False).logits

    fn = forward
    if compile_mode is not None:
        torch._dynamo.reset()  # each variant compiles afresh instead of hitting the recompile limit
        fn = torch.compile(forward, mode=compile_mode, dynamic=False)

    def steps():
        for _ in range(inner):
            fn(ids)

    with torch.no_grad():
        devices.synchronize(dev)
        t0 = time.perf_counter()
        fn(ids)
        devices.synchronize(dev)
        first = time.perf_counter() - t0
        timing = time_fn(steps, warmup=warmup, repeats=repeats, device=dev)
    step = timing["median"] / inner
    return {
        "batch": batch,
        "mode": compile_mode or "eager",
        "device": devices.name(dev),
        "first_call_s": first,
        "step_ms": step * 1e3,
        "step_ms_min": timing["min"] / inner * 1e3,  # fastest timed repeat
        "step_ms_max": timing["max"] / inner * 1e3,  # slowest timed repeat
        "tok_s": batch / step,
    }


def step_speed(rec: dict) -> dict:
    """Tokens/s of a ``forward_step()`` record with its spread, as ``results.verdict()`` takes it."""
    return {
        "median": rec["tok_s"],
        "min": rec["batch"] * 1e3 / rec["step_ms_max"],  # the slowest repeat gives the lowest speed
        "max": rec["batch"] * 1e3 / rec["step_ms_min"],
    }


def _stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor takes as stored: a quantized tensor (torchao) by its integer data and scales."""
    names = [*(getattr(t, "tensor_data_names", None) or []), *(getattr(t, "optional_tensor_data_names", None) or [])]
    parts = [getattr(t, n, None) for n in names]  # torchao's tensors list what they store
    parts = [p for p in parts if isinstance(p, torch.Tensor)]
    if parts:
        return sum(p.numel() * p.element_size() for p in parts)
    return t.numel() * t.element_size()


def step_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one batch-1 decode step reads, each in the format it is stored in.

    Every matrix counts once (tied weights once). Quantized layers count their stored bytes: torch.ao's
    dynamic int8 ``Linear`` its int8 codes, torchao's tensors their integer data and scales. An embedding
    table counts one row (a step looks up one token and one position), except a token embedding tied to
    the output layer, which the output layer reads whole. The KV cache is not included.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    seen, total = set(), 0
    for mod in model.modules():
        if isinstance(mod, torch.ao.nn.quantized.dynamic.Linear):  # int8 codes, not parameters
            bias = mod.bias()
            total += mod.weight().numel() + (0 if bias is None else bias.numel() * bias.element_size())
            continue
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            if id(t) in seen:
                continue
            seen.add(id(t))
            if isinstance(mod, nn.Embedding) and t is not head_weight:
                total += t.shape[-1] * t.element_size()  # one row per step
            else:
                total += _stored_bytes(t)
    return total


def hf_generate(model, pad_token_id: int | None = None, **kwargs):
    """A ``generate_fn`` for ``generation()``: Hugging Face ``generate()``, greedy, exactly n new tokens."""

    def run(input_ids: torch.Tensor, n: int) -> torch.Tensor:
        return model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=pad_token_id,
            **kwargs,
        )

    return run


def kv_bytes_per_step(config, batch: int, positions: float, element_size: int) -> float:
    """Bytes of K and V cache read by one decode step at ``positions`` cached tokens."""
    return 2 * config.n_layer * config.n_embd * positions * batch * element_size


def step_flops(config, batch: int, positions: float) -> float:
    """Arithmetic (FLOPs, a multiply-add counting 2) of one GPT-2 decode step for ``batch`` sequences at
    ``positions`` cached tokens: each weight of the products (12 C^2 a layer, and the output layer's V x C)
    multiplies once per sequence, and attention takes 4 C FLOPs per cached position a layer (scores, then the
    weighted sum of values)."""
    c, n_layer = config.n_embd, config.n_layer
    weights = 12 * c * c * n_layer + config.vocab_size * c
    return batch * (2 * weights + 4 * n_layer * c * positions)


def _memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "peak CUDA memory allocated"
    import psutil

    return psutil.Process().memory_info().rss, "process RSS after the run"


@torch.no_grad()
def generation(
    model,
    tokenizer,
    *,
    prompt_len: int = 32,
    new_tokens: int = 128,
    batch: int = 1,
    warmup: int = 1,
    repeats: int = 3,
    generate_fn=None,
    label: str | None = None,
    model_name: str | None = None,
    bandwidth: float | None = None,
    model_bytes: int | None = None,
) -> dict:
    """Time generation and return one record (a dict) with the speed, memory and speed-of-light figures.

    ``generate_fn(input_ids, n)`` must generate exactly ``n`` new tokens; the default is greedy
    Hugging Face ``generate()``. ``bandwidth`` (bytes/s) defaults to ``helpers.device.bandwidth()``.
    ``model_bytes``: the weight bytes one step reads, when ``generate_fn`` does not use ``model``'s own
    weights (a quantized copy, say); by default the bytes of ``model``'s parameters and buffers.
    """
    if new_tokens < 2:
        raise ValueError("new_tokens must be at least 2 to separate prefill from decoding.")
    if prompt_len < 1 or batch < 1 or repeats < 1:
        raise ValueError(f"prompt_len, batch and repeats must be at least 1; got {prompt_len}, {batch}, {repeats}.")
    if prompt_len + new_tokens > model.config.n_positions:
        raise ValueError(
            f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds the model's "
            f"{model.config.n_positions} positions."
        )
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    generate_fn = generate_fn or hf_generate(model, tokenizer.pad_token_id)
    ids = prompt_ids(tokenizer, prompt_len, batch, device)
    out = generate_fn(ids, new_tokens)
    if out.shape[-1] != prompt_len + new_tokens:
        raise RuntimeError(f"generate_fn made {out.shape[-1] - prompt_len} tokens, expected {new_tokens}.")
    first = time_fn(lambda: generate_fn(ids, 1), warmup=warmup, repeats=repeats, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = time_fn(lambda: generate_fn(ids, new_tokens), warmup=warmup, repeats=repeats, device=device)
    mem, mem_kind = _memory(device)
    # Decode time = total - prefill. A slow prefill (fp16 emulated on a CPU, say) can be most of the total, so
    # only a decode time that noise made (nearly) zero or negative is held at a small floor, and the record
    # says so ("timing_noisy"); the spread uses the same floor, so the median always lies within it.
    floor = 0.02 * total["median"]
    noisy = total["median"] - first["median"] < floor
    tpot = max(total["median"] - first["median"], floor) / (new_tokens - 1)
    # the spread of the decode speed: the fastest and slowest full runs, less the median prefill
    tpot_lo = min(max(total["min"] - first["median"], floor) / (new_tokens - 1), tpot)
    tpot_hi = max(max(total["max"] - first["median"], floor) / (new_tokens - 1), tpot)
    bw = bandwidth or devices.bandwidth(device)
    weights = model_bytes or param_bytes(model)
    kv = kv_bytes_per_step(model.config, batch, prompt_len + new_tokens / 2, param.element_size())
    sol_tok_s = batch * bw / (weights + kv)
    decode_tok_s = batch / tpot
    return {
        "label": label or f"{model_name or 'model'} {dtype_name(dtype)} batch {batch}",
        "model": model_name or getattr(model.config, "name_or_path", "") or "model",
        "params": count_params(model),
        "model_bytes": weights,
        "device": device.type,
        "device_name": devices.name(device),
        "dtype": dtype_name(dtype),
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "ttft_ms": first["median"] * 1e3,
        "ttft_ms_min": first["min"] * 1e3,
        "ttft_ms_max": first["max"] * 1e3,
        "tpot_ms": tpot * 1e3,
        "decode_tok_s": decode_tok_s,
        "decode_tok_s_min": batch / tpot_hi,  # slowest of the timed runs
        "decode_tok_s_max": batch / tpot_lo,  # fastest of the timed runs
        "e2e_tok_s": batch * new_tokens / total["median"],
        "total_s": total["median"],
        "memory_bytes": mem,
        "memory_MiB": mem / 2**20,
        "memory_kind": mem_kind,
        "bytes_per_step": weights + kv,
        "flops_per_step": step_flops(model.config, batch, prompt_len + new_tokens / 2),  # at the same average length
        "bandwidth_GBs": bw / 1e9,
        "sol_tok_s": sol_tok_s,
        "sol_fraction": decode_tok_s / sol_tok_s,
        "timing_noisy": noisy,
        "warmup": warmup,
        "repeats": repeats,
        "torch": torch.__version__,
        "date": date.today().isoformat(),
    }


def decode_speed(rec: dict) -> dict:
    """A record's decode tokens/s with its spread, as ``results.verdict()`` takes it."""
    return {"median": rec["decode_tok_s"], "min": rec.get("decode_tok_s_min"), "max": rec.get("decode_tok_s_max")}


def describe(rec: dict) -> str:
    """One line a person can read for a record from ``generation()``."""
    return (
        f"{rec['label']}: TTFT {rec['ttft_ms']:.1f} ms, {rec['tpot_ms']:.2f} ms/token, "
        f"{rec['decode_tok_s']:.1f} tokens/s decoding ({rec['sol_fraction']:.1%} of the "
        f"{rec['sol_tok_s']:.0f} tokens/s bandwidth limit), {rec['memory_kind']} {rec['memory_bytes'] / 2**20:.0f} MiB"
    )


def baseline(new_tokens: int = 128, prompt_len: int = 32, repeats: int = 5, device=None) -> list[dict]:
    """Notebook 00's baseline on this device: HF ``generate()`` in fp32 for the pocket model and GPT-2 124M."""
    from . import models

    device = devices.pick(device)
    bw = devices.bandwidth(device)
    rows = []
    for name, label in [("pocket", "pocket fp32"), ("gpt2-124m-random", "GPT-2 124M fp32")]:
        model, tok = models.load(name, device=device, verbose=False)
        rows.append(
            generation(
                model,
                tok,
                prompt_len=prompt_len,
                new_tokens=new_tokens,
                repeats=repeats,
                model_name=name,
                label=label,
                bandwidth=bw,
            )
        )
    return rows


def main(argv=None) -> None:
    """``python -m helpers.bench [--out FILE]``: measure and print the baseline table on this device."""
    import argparse

    from . import results

    p = argparse.ArgumentParser(prog="python -m helpers.bench", description=main.__doc__)
    p.add_argument("--out", type=Path, help="also write the records to this JSON file")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    rows = baseline(args.new_tokens, repeats=args.repeats)
    for r in rows:
        print(describe(r))
    print(results.table(rows, ["label", "device_name", "ttft_ms", "tpot_ms", "decode_tok_s", "sol_fraction", "date"]))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
