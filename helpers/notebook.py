"""Things every notebook does first: read quick mode, quiet known noise, print a banner.

Quick mode (``WORKBOOK_QUICK=1``, set by the test command) shrinks step counts,
token budgets and sweeps so the whole test suite fits CI. It never skips a code
path: ``pick(full, quick)`` chooses the size, the code that runs is the same.
"""

from __future__ import annotations

import logging
import os
import random
import warnings

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def env_flag(name: str, default: bool = False) -> bool:
    """An on/off environment variable, read strictly: 1/true/yes/on or 0/false/no/off (any case), else an error."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is neither on nor off: use 1 (or true, yes, on) or 0 (or false, no, off).")


def is_quick() -> bool:
    """True when ``WORKBOOK_QUICK`` asks for the small, fast version of every step."""
    return env_flag("WORKBOOK_QUICK")


def pick(full, quick):
    """Return ``quick`` in quick mode and ``full`` otherwise."""
    return quick if is_quick() else full


def quiet() -> None:
    """Silence the known, harmless noise that would bury the notebooks' outputs.

    This is the one place where warnings are filtered, so a reader can see what is hidden:
    - torch.ao.quantization's deprecation warnings (it still works; we say so where we use it);
    - torch's "beta" / "prototype" notices for sparse CSR and 2:4 tensors (notebook 04 says what they are);
    - torchao's notice that its tensors lack a compile-cache hash (compilation still works, only uncached);
    - transformers' "generation flags" and "pad_token_id" chatter for GPT-2, which has no pad token;
    - torchao's "Failed to load ... _C_*" lines on a machine without the matching GPU kernels, and the
      "Enum subclass ... register_constant" deprecation line that importing torchao makes torch log;
    - transformers' "Loading weights" progress bar and its info/warning chatter (errors still show).
    """
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*_stable_hash_for_caching.*")  # torchao tensors under compile
    warnings.filterwarnings("ignore", message=r".*Sparse CSR tensor support is in beta.*")
    warnings.filterwarnings("ignore", message=r".*SparseSemiStructuredTensor is in prototype.*")
    for name in (
        "transformers.generation.utils",
        "transformers.generation.configuration_utils",
        "torchao",
        "torch.utils._pytree",
        "transformers.modeling_utils",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # transformers 5 draws a "Loading weights" bar for every model it loads
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch so sampled outputs repeat."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int = 0) -> dict:
    """The notebooks' set-up cell: quiet noise, seed, and print what we run on.

    Returns the hardware description from ``helpers.device.describe()``.
    """
    from . import device

    quiet()
    seed_everything(seed)
    info = device.describe()
    mode = "quick (WORKBOOK_QUICK=1)" if is_quick() else "full"
    print(f"mode: {mode}")
    for key, value in info.items():
        print(f"{key:>14}: {value}")
    return info
