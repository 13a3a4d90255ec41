"""How the pocket models were made, as code: tokenizer, corpus tokens, candidate sizes, model card.

The bundled models in ``data/`` were made with this module's command line:

    python -m helpers.recipe prepare --out build/pocket-data          # tokenizer + token files (CPU)
    python -m helpers.recipe sweep --data build/pocket-data --out OUT  # train the candidates (GPU)
    python -m helpers.recipe draft --data build/pocket-data --out OUT  # train the 2-layer draft (GPU)

``notebooks/A1_training_the_pocket_model.ipynb`` walks through the same steps, small.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from . import data, models
from .train import TrainConfig, train

VOCAB_SIZE = 8192
N_POSITIONS = 512
EOT = "<|endoftext|>"
MAX_BUNDLE_MB = 48
STORE_DTYPE = torch.float16  # weights are stored in fp16 (half the bytes of fp32); loading casts them back

# The sizes the sweep compared (same data, same wall-clock budget each); the card says which won.
CANDIDATES = {
    "6x384": dict(n_layer=6, n_embd=384, n_head=6),
    "8x384": dict(n_layer=8, n_embd=384, n_head=6),
    "4x512": dict(n_layer=4, n_embd=512, n_head=8),
}
DRAFT = dict(n_layer=2, n_embd=256, n_head=4)


def train_tokenizer(texts, vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer (GPT-2's scheme) learned from ``texts``, as a transformers tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOT, eos_token=EOT, unk_token=EOT)
    if len(tok) != vocab_size or tok.decode(tok("x = 1")["input_ids"]) != "x = 1":
        raise RuntimeError(f"Tokenizer training went wrong: size {len(tok)}, expected {vocab_size}.")
    return tok


def tokenize_split(tokenizer, split: str, root=None, max_files: int | None = None) -> np.ndarray:
    """All files of a split, each followed by the end-of-text token, as one uint16 array."""
    ids: list[int] = []
    for path in data.files(split, root)[:max_files]:
        ids.extend(tokenizer(data.read(path) + data.FILE_SEPARATOR)["input_ids"])
    return np.asarray(ids, dtype=np.uint16)


def make_model(
    arch: dict, vocab_size: int = VOCAB_SIZE, n_positions: int = N_POSITIONS, dropout: float = 0.1, seed: int = 0
):
    """A fresh ``GPT2LMHeadModel`` of the given shape (tied input and output embeddings, as GPT-2)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
        **arch,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


def prepare(out: Path, vocab_size: int = VOCAB_SIZE, root=None, max_files: int | None = None) -> dict:
    """Learn the tokenizer on the train split and write it, the token files and ``meta.json`` to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_files = data.files("train", root)[:max_files]
    tok = train_tokenizer((data.read(p) for p in train_files), vocab_size)
    tok.save_pretrained(out / "tokenizer")
    meta = {
        "python": data.python_version(),
        "stdlib": str(root or data.stdlib_root()),
        "split_rule": data.SPLIT_RULE,
        "vocab_size": vocab_size,
        "splits": data.summary(root),
    }
    for split in ("train", "val"):
        arr = tokenize_split(tok, split, root, max_files)
        arr.tofile(out / f"{split}.bin")
        meta["splits"][split]["tokens"] = int(arr.size)
    meta["prepare_s"] = round(time.perf_counter() - t0, 1)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def load_prepared(path: Path):
    from transformers import AutoTokenizer

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(path / "tokenizer")
    train_ids = torch.from_numpy(np.fromfile(path / "train.bin", dtype=np.uint16).astype(np.int64))
    val_ids = torch.from_numpy(np.fromfile(path / "val.bin", dtype=np.uint16).astype(np.int64))
    return tok, train_ids, val_ids, json.loads((path / "meta.json").read_text())


def steps_for_budget(model, train_ids, cfg: TrainConfig, seconds: float, device) -> int:
    """How many steps of ``cfg`` fit in ``seconds`` on this device (timed on a throw-away copy)."""
    import copy

    probe = copy.deepcopy(model)
    quick = TrainConfig(**{**cfg.__dict__, "steps": 25, "eval_every": 10**9, "keep_best": False})
    train(probe, train_ids, None, TrainConfig(**{**quick.__dict__, "steps": 5}), progress=False)  # warm-up
    t0 = time.perf_counter()
    train(probe, train_ids, None, quick, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / quick.steps
    del probe
    return max(50, int(seconds / per_step))


def save_bundle(model, tokenizer, out: Path, card: dict) -> dict:
    """Save the model in fp16 safetensors shards under 16 MiB, the tokenizer, SHA256SUMS and the card."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(STORE_DTYPE)
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0  # inference needs no dropout
    model.save_pretrained(out, max_shard_size="15MB", safe_serialization=True)
    tokenizer.save_pretrained(out)
    files = sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    sums = {f: models.sha256(out / f) for f in files}
    (out / "SHA256SUMS").write_text("".join(f"{d}  {f}\n" for f, d in sums.items()))
    card["files"] = {f: {"bytes": (out / f).stat().st_size, "sha256": d} for f, d in sums.items()}
    (out / "card.json").write_text(json.dumps(card, indent=1))
    (out / "README.md").write_text(render_card(card))
    return card


def render_card(card: dict) -> str:
    """The model card (README.md) from the facts gathered while training."""
    a = card["arch"]
    rows = "\n".join(f"| `{f}` | {v['bytes']:,} | `{v['sha256']}` |" for f, v in card["files"].items())
    sweep = ""
    if card.get("sweep"):
        sweep = (
            "\n## How the size was chosen\n\nEach candidate trained with the same recipe and the same wall-clock "
            f"budget ({card['budget_s']:.0f} s) on {card['device']}; the one with the best validation perplexity "
            f"that fits the {MAX_BUNDLE_MB} MB bundle (with the draft model) was kept.\n\n"
            "| candidate | parameters | fp16 MB | steps | tokens seen | val perplexity |\n|---|---|---|---|---|---|\n"
            + "\n".join(
                f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['params'] * 2 / 1e6:.1f} | {r['steps']} | "
                f"{r['tokens_seen'] / 1e6:.0f}M | {r['val_ppl']:.2f} |"
                for r in card["sweep"]
            )
            + "\n"
        )
    t, m = card["train"], card["meta"]
    amp = "bf16 autocast" if card["device_type"] == "cuda" else "fp32"
    facts = [
        (
            "architecture",
            f"`GPT2LMHeadModel`: {a['n_layer']} layers, {a['n_embd']} wide, {a['n_head']} heads, "
            f"{N_POSITIONS} positions, vocabulary {VOCAB_SIZE}, tied embeddings",
        ),
        ("parameters", f"{card['params']:,}"),
        (
            "weights",
            "float16 safetensors (trained with fp32 master weights); `helpers.models.load` casts them "
            "to the dtype asked for",
        ),
        (
            "corpus",
            f"the `.py` files of the Python {m['python']} standard library (`site-packages` and files over "
            f"{data.MAX_FILE_BYTES:,} bytes left out), each followed by `{EOT}`",
        ),
        ("split", f"by file: {m['split_rule']}"),
        (
            "train / val tokens",
            f"{m['splits']['train']['tokens']:,} / {m['splits']['val']['tokens']:,} "
            f"({m['splits']['train']['files']} / {m['splits']['val']['files']} files)",
        ),
        (
            "tokenizer",
            f"byte-level BPE (GPT-2's scheme), {VOCAB_SIZE} tokens, learned on the train split; loads "
            "with `GPT2TokenizerFast.from_pretrained`",
        ),
        (
            "recipe",
            f"AdamW (betas {tuple(t['betas'])}, weight decay {t['weight_decay']}), lr {t['lr']} with "
            f"{t['warmup_steps']} warm-up steps then cosine to {t['min_lr_ratio']}x, batch {t['batch_size']} x "
            f"{t['block_size']} tokens, dropout {card['dropout']}, grad clip {t['grad_clip']}, {amp}; the weights "
            f"with the best validation loss kept (step {card['best_step']})",
        ),
        (
            "steps",
            f"{t['steps']} ({card['tokens_seen'] / 1e6:.0f}M tokens, "
            f"{card['tokens_seen'] / m['splits']['train']['tokens']:.1f} passes over the train split)",
        ),
        ("wall time", f"{card['wall_s']:.0f} s of training"),
        ("device", f"{card['device']} (torch {card['torch']}, transformers {card['transformers']}), {card['date']}"),
        (
            "validation perplexity",
            f"**{card['val_ppl']:.2f}** over all {m['splits']['val']['tokens']:,} validation "
            f"tokens (context {N_POSITIONS}, stride {N_POSITIONS // 2}), fp16 weights as shipped, computed in fp32",
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in facts)
    return (
        f"# {card['name']}\n\n{card['summary']}\n\n| | |\n|---|---|\n{table}\n\n"
        f"Made with `python -m helpers.recipe {card['command']}` (see `helpers/recipe.py` and "
        "`notebooks/A1_training_the_pocket_model.ipynb`).\n"
        f"{sweep}\n## Files\n\n| file | bytes | sha256 |\n|---|---|---|\n{rows}\n\n"
        "`helpers.models.load` checks these sums (listed in `SHA256SUMS`) before loading and refuses damaged files.\n"
    )


def _card_base(name, model, res, meta, device, command, dropout, val_ppl):
    import transformers

    return {
        "name": name,
        "arch": {k: getattr(model.config, k) for k in ("n_layer", "n_embd", "n_head")},
        "params": models.count_params(model),
        "train": res["config"],
        "best_step": res["best_step"],
        "wall_s": res["wall_s"],
        "tokens_seen": res["tokens_seen"],
        "meta": meta,
        "dropout": dropout,
        "device": _device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "device_type": torch.device(device).type,
        "command": command,
        "val_ppl": val_ppl,
        "history": res["history"],
        "host_python": platform.python_version(),
    }


def _device_name(device) -> str:
    from . import device as devices

    return devices.name(device)


def _shipped_ppl(model, val_ids) -> float:
    """Perplexity of the weights as they will be shipped (rounded to fp16), computed in fp32."""
    from .evaluate import perplexity

    shipped = type(model)(model.config).to(next(model.parameters()).device)
    shipped.load_state_dict({k: v.to(STORE_DTYPE).float() for k, v in model.state_dict().items()})
    shipped.eval()
    return perplexity(shipped, val_ids, context=N_POSITIONS, stride=N_POSITIONS // 2, batch_size=32, progress=False)


def sweep(data_dir: Path, out: Path, budget_s: float, names: list[str], base: TrainConfig, dropout: float) -> dict:
    """Train each candidate for ``budget_s`` seconds; save the best that fits as ``out/pocket-gpt2``."""
    from . import device as devices

    device = devices.pick()
    tok, train_ids, val_ids, meta = load_prepared(data_dir)
    rows, best = [], None
    for name in names:
        model = make_model(CANDIDATES[name], dropout=dropout).to(device)
        steps = steps_for_budget(model, train_ids, base, budget_s, device)
        cfg = TrainConfig(**{**base.__dict__, "steps": steps, "eval_every": max(50, steps // 20)})
        res = train(model, train_ids, val_ids, cfg)
        ppl = _shipped_ppl(model, val_ids)
        row = {
            "name": name,
            "params": models.count_params(model),
            "steps": steps,
            "tokens_seen": res["tokens_seen"],
            "val_ppl": ppl,
            "wall_s": res["wall_s"],
            "best_step": res["best_step"],
        }
        print(json.dumps(row))
        rows.append(row)
        fits = row["params"] * 2 / 1e6 <= MAX_BUNDLE_MB - 10  # leave room for the draft and two tokenizers
        if fits and (best is None or ppl < best[0]):
            best = (ppl, name, model.cpu(), res)
        else:
            del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ppl, name, model, res = best
    card = _card_base(
        "pocket-gpt2",
        model,
        res,
        meta,
        device,
        f"sweep --budget {budget_s:.0f} --candidates {' '.join(names)}",
        dropout,
        ppl,
    )
    card["summary"] = (
        f"The workbook's pocket model: a {card['params'] / 1e6:.1f}M-parameter GPT-2 trained from "
        f"scratch by this project on Python source code. Size chosen by a sweep ({name} won)."
    )
    card["sweep"], card["budget_s"] = rows, budget_s
    return save_bundle(model, tok, Path(out) / "pocket-gpt2", card)


def train_draft(data_dir: Path, out: Path, base: TrainConfig, dropout: float) -> dict:
    """Train the 2-layer draft model with the pocket tokenizer; save it as ``out/pocket-gpt2-draft``."""
    from . import device as devices

    device = devices.pick()
    tok, train_ids, val_ids, meta = load_prepared(data_dir)
    model = make_model(DRAFT, dropout=dropout).to(device)
    res = train(model, train_ids, val_ids, base)
    ppl = _shipped_ppl(model, val_ids)
    card = _card_base("pocket-gpt2-draft", model, res, meta, device, f"draft --steps {base.steps}", dropout, ppl)
    card["summary"] = (
        f"A {card['params'] / 1e6:.1f}M-parameter, 2-layer GPT-2 with the pocket model's tokenizer: "
        "the draft for speculative decoding and the starting student for distillation."
    )
    return save_bundle(model.cpu(), tok, Path(out) / "pocket-gpt2-draft", card)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m helpers.recipe", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="learn the tokenizer and write token files")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--vocab", type=int, default=VOCAB_SIZE)
    a.add_argument("--max-files", type=int, default=None)
    for name in ("sweep", "draft"):
        b = sub.add_parser(name)
        b.add_argument("--data", type=Path, required=True)
        b.add_argument("--out", type=Path, required=True)
        b.add_argument("--batch", type=int, default=64)
        b.add_argument("--lr", type=float, default=1.5e-3)
        b.add_argument("--dropout", type=float, default=0.1)
        if name == "sweep":
            b.add_argument("--budget", type=float, default=120.0, help="seconds of training per candidate")
            b.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
        else:
            b.add_argument("--steps", type=int, default=2000)
    args = p.parse_args(argv)
    if args.cmd == "prepare":
        print(json.dumps(prepare(args.out, args.vocab, max_files=args.max_files), indent=1))
        return
    base = TrainConfig(batch_size=args.batch, block_size=N_POSITIONS, lr=args.lr, warmup_steps=200)
    if args.cmd == "sweep":
        card = sweep(args.data, args.out, args.budget, args.candidates, base, args.dropout)
    else:
        base.steps, base.eval_every = args.steps, max(50, args.steps // 20)
        card = train_draft(args.data, args.out, base, args.dropout)
    print(
        f"{card['name']}: {card['params']:,} parameters, val perplexity {card['val_ppl']:.2f}, "
        f"{card['wall_s']:.0f} s on {card['device']}"
    )


if __name__ == "__main__":
    main()
