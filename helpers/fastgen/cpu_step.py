"""The hand-written decode step on a CPU: GPT-2 at batch 1, greedy, q8_0 weights, the whole token in one C++ call.

``triton_step`` is the GPU's hand-written step; this is the CPU's, and the way llama.cpp runs: no framework
between the operations of a step. ``helpers/q8_step.cpp`` (built with the q8_0 kernel by ``q8.kernel()``) holds
the loops: embeddings, each block's LayerNorms, q8_0 products, attention over the positions written so far, GELU
and residuals, the output layer and the largest logit. This file only gathers the decoder's tensors (its own
memory, nothing copied: the weights as ``q8.Q8Linear`` stores them, the KV cache buffers the prefill wrote) and
gives the step the interface ``ModelStep`` and ``TritonStep`` share. Notebook 03c measures what it saves against
the compiled step.
"""

from __future__ import annotations

import torch

from .. import q8
from .model import KVCache


def runnable(model) -> tuple[bool, str]:
    """Whether the C++ step can run ``model`` (a ``Decoder``), and why not (a sentence that says what to do)."""
    if model.wpe.weight.device.type != "cpu" or model.wpe.weight.dtype != torch.float32:
        return False, "the C++ step runs float32 activations on the CPU."
    layers = [model.head] + [getattr(b, n) for b in model.blocks for n in ("qkv", "proj", "fc", "out")]
    if not all(isinstance(m, q8.Q8Linear) for m in layers):
        return False, "the C++ step reads q8_0 weights: build FastGPT2 with int8='q8_0'."
    if model.wte is None:
        return False, "the C++ step reads the token embedding from the decoder's float copy (wte)."
    return True, "q8_0 weights on the CPU"


def _tensors(model) -> list[torch.Tensor]:
    """The decoder's tensors in the order ``Q8Step`` takes them (q8_step.cpp's constructor says it)."""

    def q8(layer, bias=True):
        return [layer.codes, layer.scales] + ([layer.bias] if bias else [])

    out = [model.wte.weight, model.wpe.weight, model.ln_f.weight, model.ln_f.bias, *q8(model.head, bias=False)]
    for b in model.blocks:
        out += [b.ln_1.weight, b.ln_1.bias, *q8(b.qkv), *q8(b.proj), b.ln_2.weight, b.ln_2.bias]
        out += [*q8(b.fc), *q8(b.out), b.cache.k, b.cache.v]
    return [t.detach() for t in out]


class CppStep:
    """One greedy decode step of ``model`` (a ``Decoder`` with q8_0 layers and a batch-1 ``KVCache``) in one C++
    call: reads the token ``tok`` (1, 1) at position ``pos`` (1,), writes the next token at ``pos + 1`` of ``out``
    (1, L) and into ``tok``, and advances ``pos`` (the interface ``ModelStep`` and ``TritonStep`` share).
    ``logits(token, position)`` gives the logits (V,) instead, for checking against the model's forward;
    ``products()`` runs only the step's matrix products, for timing.
    ``kernel``: a build of the kernel (``q8.kernel(variant=...)``, for tests); default this CPU's own."""

    def __init__(self, model, tok: torch.Tensor, pos: torch.Tensor, out: torch.Tensor, kernel=None):
        ok, why = runnable(model)
        if not ok:
            raise ValueError(f"The C++ decode step cannot run this model: {why}")
        if model.batch != 1 or not all(type(b.cache) is KVCache for b in model.blocks):
            raise ValueError("The C++ decode step takes batch 1 and a float KV cache (kv_cache='float').")
        cfg = model.config
        eps = model.ln_f.eps
        if any(ln.eps != eps for b in model.blocks for ln in (b.ln_1, b.ln_2)):
            raise ValueError("The C++ decode step takes one LayerNorm epsilon for every LayerNorm.")
        if model.pad.any():
            raise ValueError("The C++ decode step takes no left padding (batch 1 drops it).")
        make = (kernel or q8.kernel()).Q8Step
        self.step = make(_tensors(model), len(model.blocks), cfg.n_head, model.head.out_features, float(eps))
        self.tok, self.pos, self.out = tok, pos, out

    def __call__(self) -> None:
        self.step.greedy(self.tok, self.pos, self.out)

    def products(self) -> None:
        """Only the step's matrix products (49 for GPT-2, biases included), in one C++ call: what the rest of a
        step costs is the step's time less this (notebook 03c)."""
        self.step.products()

    def logits(self, token: int, position: int) -> torch.Tensor:
        """The logits (V,) of ``token`` at ``position`` (its keys and values are written into the cache)."""
        return self.step.logits(token, position)
