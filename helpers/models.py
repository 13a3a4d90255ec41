"""The model zoo: one ``load(name)`` for every model the workbook uses.

Names (``NAMES`` lists them):
- ``pocket``: the bundled small GPT-2, trained by this project on the Python standard library
  (``data/pocket-gpt2``). Used whenever the Hugging Face Hub cannot be reached.
- ``pocket-draft``: a much smaller model with the same tokenizer (``data/pocket-gpt2-draft``),
  for speculative decoding and as a distillation student.
- ``gpt2``, ``distilgpt2``, ``gpt2-medium``: the real models from the Hub, when it answers.
- ``gpt2-124m-random``: the GPT-2 124M architecture with random weights, for speed lessons only
  (speed does not depend on the weights' values; quality does).

``WORKBOOK_MODEL`` picks the model for every notebook. Unset, it is ``pocket``, the bundled model, so that
a run anywhere (Colab included) reproduces the committed outputs. One explicit switch gives another GPT-2:
- a zoo name above (``gpt2`` needs the Hub);
- ``auto``: ``gpt2`` when the Hub answers quickly, ``pocket`` otherwise (it says which and why);
- **your own GPT-2**: a local folder saved with ``save_pretrained`` (``config.json``, safetensors weights and
  the tokenizer's files), or any Hub id whose architecture is GPT-2 (``openai-community/gpt2-large``, a
  fine-tune). Anything else (a Llama, a folder without a tokenizer) is refused with what was found.
``WORKBOOK_HUB_MIRROR=/folder`` makes Hub names load from ``/folder/<name>`` (a local checkpoint) through the
same code.

Bundled weights are checked against the sha256 sums in their folder's ``SHA256SUMS`` before
loading, and only safetensors files are read.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DATA = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class Spec:
    kind: str  # "bundled", "hub" or "random"
    source: str  # folder under data/, Hub repo id, or a description
    about: str


ZOO = {
    "pocket": Spec("bundled", "pocket-gpt2", "small GPT-2 trained by this project on the Python standard library"),
    "pocket-draft": Spec("bundled", "pocket-gpt2-draft", "2-layer draft model with the pocket tokenizer"),
    "gpt2": Spec("hub", "openai-community/gpt2", "GPT-2 124M from the Hugging Face Hub"),
    "distilgpt2": Spec("hub", "distilbert/distilgpt2", "DistilGPT-2 82M from the Hugging Face Hub"),
    "gpt2-medium": Spec("hub", "openai-community/gpt2-medium", "GPT-2 355M from the Hugging Face Hub"),
    "gpt2-124m-random": Spec("random", "GPT2Config()", "GPT-2 124M architecture, random weights (speed only)"),
}
NAMES = tuple(ZOO)
HUB_TIMEOUT_S = 2.0


class UnknownModelError(ValueError):
    pass


class NotGPT2Error(ValueError):
    """A checkpoint that is not a GPT-2 (``GPT2LMHeadModel``), or whose tokenizer does not fit it."""


class ChecksumError(ValueError):
    pass


def _check_name(name: str) -> Spec:
    if name in ZOO:
        return ZOO[name]
    if Path(name).expanduser().is_dir():
        return Spec("folder", str(Path(name).expanduser().resolve()), f"GPT-2 checkpoint from the folder {name}")
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return Spec("hub", name, f"{name} from the Hugging Face Hub")
    valid = ", ".join(NAMES + ("auto",))
    raise UnknownModelError(
        f"Unknown model {name!r}. Valid names: {valid}; or a folder saved with save_pretrained, "
        "or a Hub id such as 'openai-community/gpt2-large' (GPT-2 architectures only)."
    )


def check_gpt2_config(source: str | Path, local_only: bool) -> None:
    """Refuse, before loading any weights, a checkpoint whose config is not a GPT-2's; say what was found."""
    from transformers import AutoConfig

    folder = Path(source)
    if folder.is_dir() and (folder / "config.json").exists() and not list(folder.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise NotGPT2Error(
            f"{folder} holds no safetensors weights (found: {found}). The workbook loads safetensors only; "
            "convert with model.save_pretrained(folder) (it writes model.safetensors)."
        )

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise NotGPT2Error(
            f"{source} has no readable config.json, so it is not a checkpoint saved with save_pretrained: {err}"
        ) from err
    arch = ", ".join(config.architectures or []) or "no architectures listed"
    if config.model_type != "gpt2" or (config.architectures and "GPT2LMHeadModel" not in config.architectures):
        raise NotGPT2Error(
            f"{source} holds a {config.model_type!r} model ({arch}). The workbook takes GPT-2 checkpoints "
            "(model_type 'gpt2', GPT2LMHeadModel): a folder saved with save_pretrained or a Hub id."
        )


def check_tokenizer(model, tokenizer, source) -> None:
    """Refuse a tokenizer that is empty or has ids beyond the model's vocabulary (a silent wrong result later)."""
    n = len(tokenizer)
    if n <= 1 or not tokenizer("def f(x):\n    return x")["input_ids"]:
        raise NotGPT2Error(
            f"the tokenizer of {source} is empty (length {n}): its vocab.json / merges.txt or tokenizer.json are "
            "missing. Save the tokenizer with the model (tokenizer.save_pretrained(folder))."
        )
    if n > model.config.vocab_size:
        raise NotGPT2Error(
            f"the tokenizer of {source} has {n} tokens but the model's vocabulary has {model.config.vocab_size}: "
            "they do not belong together. Save the model's own tokenizer with it."
        )


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """True if the Hugging Face Hub answers within ``timeout`` seconds (and HF_HUB_OFFLINE is unset)."""
    from .notebook import env_flag

    if env_flag("HF_HUB_OFFLINE"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        request = urllib.request.Request(endpoint + "/api/models/openai-community/gpt2", method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status < 500
    except Exception:
        return False


def resolve(name: str | None = None, verbose: bool = True) -> str:
    """The model to use: ``name``, else ``WORKBOOK_MODEL``, else ``pocket``; ``auto`` is decided here.

    Returns a zoo name, a folder path or a Hub id (see the module docstring).
    """
    name = (name or os.environ.get("WORKBOOK_MODEL") or "pocket").strip()
    if name != "auto":
        _check_name(name)
        return name
    if os.environ.get("WORKBOOK_HUB_MIRROR"):
        chosen, why = "gpt2", "WORKBOOK_HUB_MIRROR is set, so Hub names load from that folder"
    elif hub_reachable():
        chosen, why = "gpt2", "the Hugging Face Hub answered"
    else:
        chosen, why = "pocket", f"the Hugging Face Hub did not answer within {HUB_TIMEOUT_S:.0f} s"
    if verbose:
        print(f"WORKBOOK_MODEL=auto -> {chosen!r} ({why}).")
    return chosen


def folder(name: str) -> Path:
    """The folder of a bundled model."""
    spec = _check_name(name)
    if spec.kind != "bundled":
        raise ValueError(
            f"{name!r} is not a bundled model; bundled ones: "
            + ", ".join(n for n, s in ZOO.items() if s.kind == "bundled")
        )
    return DATA / spec.source


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(model_dir: Path | str) -> dict[str, str]:
    """Check every file listed in ``SHA256SUMS`` exists and matches; return ``{file: sha256}``."""
    model_dir = Path(model_dir)
    sums = model_dir / "SHA256SUMS"
    if not sums.exists():
        raise FileNotFoundError(
            f"{sums} is missing, so the weights cannot be verified. Restore the folder with `git checkout -- data/`."
        )
    restore = f"Restore the folder with `git checkout -- {model_dir}`."
    expected = {}
    for number, line in enumerate(sums.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64 or any(c not in "0123456789abcdef" for c in parts[0].lower()):
            raise ChecksumError(f"{sums}:{number} is not a 'sha256  file' line: {line[:80]!r}. {restore}")
        expected[parts[1].strip().lstrip("*")] = parts[0].lower()
    if not expected:
        raise ChecksumError(f"{sums} lists no files, so nothing could be verified. {restore}")
    weights = {p.name for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")}
    unlisted = sorted(weights - set(expected))
    if unlisted:
        raise ChecksumError(
            f"{model_dir} holds weight files that SHA256SUMS does not list: {', '.join(unlisted)}. They could be "
            f"loaded instead of the checked ones; remove them. {restore}"
        )
    for fname, digest in expected.items():
        path = model_dir / fname
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing. Restore it with `git checkout -- {path}`.")
        actual = sha256(path)
        if actual != digest:
            raise ChecksumError(
                f"{path} has sha256 {actual[:12]}..., expected {digest[:12]}... "
                "The file is damaged or was changed; restore it with `git checkout`."
            )
    return expected


def _tokenizer(source: str | Path, local_only: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, local_files_only=local_only)


def _load_pretrained(source: str | Path, dtype: torch.dtype, local_only: bool):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(source, dtype=dtype, use_safetensors=True, local_files_only=local_only)
    return model, _tokenizer(source, local_only)


def random_gpt2_124m(seed: int = 0, dtype: torch.dtype = torch.float32):
    """GPT-2 124M (12 layers, 768 wide, 50257 vocab, 1024 positions) with random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config())
    return model.to(dtype)


def load(
    name: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    verbose: bool = True,
):
    """Load a model of the zoo by name; return ``(model, tokenizer)`` with the model in eval mode.

    ``name=None`` reads ``WORKBOOK_MODEL`` (default ``pocket``); a folder or a GPT-2 Hub id also works.
    ``device=None`` uses
    ``helpers.device.pick()``. The tokenizer's pad token is set to its end-of-text token.
    ``gpt2-124m-random`` comes with the pocket tokenizer (its ids fit the larger vocabulary).
    """
    from . import device as devices

    name = resolve(name, verbose=verbose)
    spec = _check_name(name)
    target = devices.pick(device) if device is None or isinstance(device, str) else device
    if spec.kind == "bundled":
        path = folder(name)
        verify(path)
        model, tokenizer = _load_pretrained(path, dtype, local_only=True)
    elif spec.kind == "folder":
        check_gpt2_config(spec.source, local_only=True)
        model, tokenizer = _load_pretrained(spec.source, dtype, local_only=True)
        check_tokenizer(model, tokenizer, spec.source)
    elif spec.kind == "hub":
        mirror = os.environ.get("WORKBOOK_HUB_MIRROR")
        if mirror:
            source, local_only = Path(mirror) / name, True
            if not source.is_dir():
                raise FileNotFoundError(f"WORKBOOK_HUB_MIRROR is set, but {source} does not exist.")
            spec = Spec(spec.kind, str(source), f"{name} from the local mirror {source} (WORKBOOK_HUB_MIRROR)")
        else:
            source, local_only = spec.source, not hub_reachable()
        try:
            check_gpt2_config(source, local_only)
            model, tokenizer = _load_pretrained(source, dtype, local_only)
        except NotGPT2Error as err:
            if mirror or "no readable config.json" not in str(err):
                raise  # what is wrong with the folder, not "the Hub is unreachable"
            raise RuntimeError(
                f"Could not load {name!r} ({spec.source}): the Hugging Face Hub is not reachable "
                "from here and the model is not in the local cache. Use WORKBOOK_MODEL=pocket "
                "(the bundled model) instead."
            ) from err
        except OSError as err:
            raise RuntimeError(
                f"Could not load {name!r} ({spec.source}): the Hugging Face Hub is not reachable "
                "from here and the model is not in the local cache. Use WORKBOOK_MODEL=pocket "
                "(the bundled model) instead."
            ) from err
        check_tokenizer(model, tokenizer, source)
    else:
        model = random_gpt2_124m(dtype=dtype)
        verify(folder("pocket"))
        tokenizer = _tokenizer(folder("pocket"), local_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model = model.to(target).eval()
    if verbose:
        print(
            f"loaded {name!r}: {spec.about}; {count_params(model) / 1e6:.1f}M parameters, "
            f"{dtype_name(dtype)}, on {target}"
        )
    return model, tokenizer


def count_params(model: nn.Module) -> int:
    """Parameters, counting tied weights once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def param_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers (tied weights once): what one full read of the model costs."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replace transformers' ``Conv1D`` layers (GPT-2 uses them) by equivalent ``nn.Linear``, in place.

    ``Conv1D`` stores its weight as (in, out) and computes ``x @ W + b``; ``nn.Linear`` stores
    (out, in). Many torch tools (dynamic quantization, pruning utilities, sparsity) only look for
    ``nn.Linear``, so they silently skip GPT-2's layers unless they are converted first.
    """
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = nn.Linear(
                    n_in, n_out, bias=child.bias is not None, device=child.weight.device, dtype=child.weight.dtype
                )
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)
    return model
