"""The eager decoder: GPT-2's forward pass over a static KV cache, in plain PyTorch.

This is the model every other part of ``helpers.fastgen`` runs: the compile and CUDA-graph policy
(``policy.py``) wraps its ``forward`` from outside, the Triton step (``triton_step.py``) reads its weights
and its cache, int8 (``helpers.quant``) swaps its ``Linear`` layers, and the generator (``generator.py``)
drives it token by token. Read it first.

- ``matvec``: a one-row matrix product written as multiply-and-sum (fused into one pass by the compiler).
- ``Linear``: a linear layer with weights stored (out, in), as ``F.linear`` takes them.
- ``KVCache``: one layer's keys and values in preallocated buffers; ``update`` writes a step's in place.
  ``Int8KVCache``: the same in int8 with a scale per head and position (notebook 08's cache quantization).
- ``Block``: one transformer block reading and writing its ``KVCache``.
- ``Decoder``: embeddings, blocks, final LayerNorm and output layer, with the cache and padding set up by
  ``setup_caches``; ``forward(ids, pos)`` gives the logits of the last position.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for a single row ``x``, written as multiply-and-sum.

    Compiled, this becomes one reduction kernel that reads each weight once, in its stored dtype
    (int8 included), and accumulates in fp32: at batch 1 that can beat a general matrix multiply,
    which is built for many rows. Eager, it would build the whole product in memory: use it compiled.
    """
    return (x.unsqueeze(-2).float() * weight.float()).sum(-1).to(x.dtype)  # (..., 1, in) * (out, in) -> (..., out)


class Linear(nn.Module):
    """``y = x @ weight.T + bias`` with the weight stored (out, in); ``matvec=True`` computes one-row inputs
    with ``matvec`` (the compiled decode step at batch 1 turns it on)."""

    def __init__(self, weight_out_in: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(weight_out_in.detach().to(dtype).contiguous(), requires_grad=False)  # (out, in)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)  # (out,)
        self.matvec = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = matvec(x, self.weight) if self.matvec and x.shape[:-1].numel() == 1 else F.linear(x, self.weight)
        return y if self.bias is None else y + self.bias

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the weight: the token embedding, tied to the output layer, reads them."""
        return F.embedding(ids, self.weight)  # (B, T) -> (B, T, in)


def from_conv1d(conv, dtype: torch.dtype) -> Linear:
    """transformers' ``Conv1D`` (weight stored (in, out)) as a ``Linear`` (weight (out, in))."""
    return Linear(conv.weight.t(), conv.bias, dtype)


class KVCache(nn.Module):
    """One layer's keys and values for ``batch`` sequences of up to ``length`` positions.

    The buffers are allocated once, so every decode step sees the same shapes (what a compiled step and a
    CUDA graph need); ``update`` writes the new positions in place and returns the whole cache, whose
    positions not yet written are masked out by the attention mask.
    """

    def __init__(self, batch: int, n_head: int, length: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, n_head, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)  # (B, H, L, D)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)  # (B, H, L, D)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys and values ``k``, ``v`` (B, H, T, D) at positions ``pos`` (T,); return the full cache."""
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k, self.v  # (B, H, L, D) each


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention written out: what ``F.scaled_dot_product_attention`` computes.

    Compiled on a CPU, these few lines fuse with the code around them into generated C++, where the library
    call stays one opaque kernel; at one new token the written-out form is the faster (notebook 03c)."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T, L)
    # the most negative float rather than -inf: a padding position whose row is all masked gets finite numbers
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # masked keys get weight exp(-huge) = 0
    return scores.softmax(-1) @ v  # (B, H, T, D)


class Int8KVCache(nn.Module):
    """``KVCache`` with keys and values stored as int8: one scale per sequence, head and position (the largest
    magnitude of that position's ``head_dim`` values / 127), so a new token's keys never change older scales.

    ``update`` quantizes and writes the new positions, then returns the whole cache dequantized (B, H, L, D) in
    ``dtype``: the cache holds about a quarter of fp32's bytes, but this eager form builds a float copy of it at
    every step; reading the int8 codes inside the attention kernel is what saves time (notebook 08 measures)."""

    def __init__(self, batch: int, n_head: int, length: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape, scales = (batch, n_head, length, head_dim), (batch, n_head, length, 1)
        for name in ("k", "v"):
            self.register_buffer(f"{name}_codes", torch.zeros(shape, dtype=torch.int8, device=device), persistent=False)
            self.register_buffer(f"{name}_scale", torch.zeros(scales, dtype=dtype, device=device), persistent=False)

    @staticmethod
    def quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int8 codes and scales of ``t`` (B, H, T, D): one scale per (B, H, T) row of D values."""
        scale = t.abs().amax(-1, keepdim=True) / 127  # (B, H, T, 1)
        codes = torch.where(scale > 0, t / scale.clamp(min=torch.finfo(t.dtype).tiny), 0).round()
        return codes.clamp(-127, 127).to(torch.int8), scale  # (B, H, T, D) int8, (B, H, T, 1)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize and write ``k``, ``v`` (B, H, T, D) at positions ``pos`` (T,); return the whole cache as floats."""
        for name, t in (("k", k), ("v", v)):
            codes, scale = self.quantize(t)
            getattr(self, f"{name}_codes").index_copy_(2, pos, codes)
            getattr(self, f"{name}_scale").index_copy_(2, pos, scale)
        dtype = self.k_scale.dtype
        return self.k_codes.to(dtype) * self.k_scale, self.v_codes.to(dtype) * self.v_scale  # (B, H, L, D) each

    def bytes_per_position(self) -> int:
        """Bytes one position of one sequence takes in one layer: int8 codes and the scales, keys and values."""
        b, h, _, d = self.k_codes.shape
        return 2 * h * (d + self.k_scale.element_size())


class Block(nn.Module):
    """One GPT-2 transformer block; ``cache`` (a ``KVCache``) is set by ``Decoder.setup_caches``, or by anything
    with the same ``update`` (``helpers.serve`` gives it a view of its paged cache). ``sdpa=False`` computes
    attention with the written-out ``attention`` instead of PyTorch's fused kernel."""

    def __init__(self, h, n_head: int, dtype: torch.dtype):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = copy.deepcopy(h.ln_1).to(dtype), copy.deepcopy(h.ln_2).to(dtype)
        self.qkv = from_conv1d(h.attn.c_attn, dtype)  # (3C, C): queries, keys and values in one product
        self.proj = from_conv1d(h.attn.c_proj, dtype)  # (C, C): the attention's output projection
        self.fc = from_conv1d(h.mlp.c_fc, dtype)  # (4C, C): the MLP's first product
        self.out = from_conv1d(h.mlp.c_proj, dtype)  # (C, 4C): the MLP's second product
        self.cache: KVCache | None = None
        self.sdpa = True

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape  # batch, new positions, width
        q, k, v = self.qkv(self.ln_1(x)).split(c, dim=2)  # (B, T, C) each
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
        k, v = self.cache.update(pos, k, v)  # (B, H, L, D): every cached position, this step's included
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask) if self.sdpa else attention(q, k, v, mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))  # (B, T, C)
        return x + self.out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))  # (B, T, C)


class Decoder(nn.Module):
    """GPT-2 for decoding, built from a ``GPT2LMHeadModel``'s weights (copied, in ``dtype``).

    The output layer shares its weight with the token embedding, as in GPT-2: ``embed`` reads the output
    layer's rows, unless ``wte`` holds a separate embedding (set when the output layer is swapped for one
    that cannot give its rows, such as dynamic int8 on a CPU).
    """

    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        cfg, src = model.config, model.transformer
        self.config = cfg
        with torch.no_grad():
            self.wpe = nn.Embedding.from_pretrained(src.wpe.weight.detach().to(dtype).clone(), freeze=True)  # (P, C)
            self.blocks = nn.ModuleList(Block(h, cfg.n_head, dtype) for h in src.h)
            self.ln_f = copy.deepcopy(src.ln_f).to(dtype)
            self.head = Linear(src.wte.weight, None, dtype)  # (V, C), tied to the token embedding
        self.wte: nn.Embedding | None = None  # a separate token embedding (see the class docstring)
        self.kv_int8 = False  # setup_caches makes Int8KVCache instead of KVCache (FastGPT2's kv_cache="int8")
        self.requires_grad_(False)
        self.batch = self.length = None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.wte(ids) if self.wte is not None else self.head.rows(ids)  # (B, T) -> (B, T, C)

    def setup_caches(self, batch: int, length: int) -> bool:
        """Allocate each block's ``KVCache`` and the padding for ``batch`` sequences of ``length`` positions.

        Returns whether the shapes changed (a compiled step or a captured graph must then be made again).
        """
        if (batch, length) == (self.batch, self.length):
            return False
        cfg, p = self.config, self.wpe.weight
        kind = Int8KVCache if self.kv_int8 else KVCache
        for block in self.blocks:
            block.cache = kind(batch, cfg.n_head, length, cfg.n_embd // cfg.n_head, p.dtype, p.device)
        # left padding of each row, and the positions 0..length-1 the masks compare against
        self.register_buffer("pad", torch.zeros(batch, dtype=torch.long, device=p.device), persistent=False)
        self.register_buffer("arange", torch.arange(length, device=p.device), persistent=False)
        self.batch, self.length = batch, length
        return True

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) of the last position for tokens ``ids`` (B, T) at cache positions ``pos`` (T,)."""
        return self.head(self.ln_f(self.hidden(ids, pos)[:, -1])).float()  # (B, V)

    def hidden(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The last block's output (B, T, C) for every position of ``ids`` (B, T) at cache positions ``pos``
        (T,), writing their keys and values into the cache; ``forward`` turns its last position into logits."""
        positions = (pos[None, :] - self.pad[:, None]).clamp(min=0)  # (B, T): left padding shifts each row
        x = self.embed(ids) + self.wpe(positions)  # (B, T, C)
        keys = self.arange[None, None, :]  # (1, 1, L)
        mask = (keys <= pos[None, :, None]) & (keys >= self.pad[:, None, None])  # (B, T, L): causal, not padding
        for block in self.blocks:
            x = block(x, pos, mask.unsqueeze(1))  # mask (B, 1, T, L): the same for every head
        return x  # (B, T, C)

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (tied weights once; the KV cache not included).

        A separate token embedding (``wte``) is left out: a step reads one row of it. Quantized layers
        count what they store (``torch.ao``'s dynamic int8 layers keep their int8 weights outside
        ``parameters()``; ``q8.Q8Linear`` keeps its codes and scales as buffers and counts them itself).
        """
        total = 0
        for m in self.modules():
            if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):  # int8 weights (not parameters), float bias
                b = m.bias()
                total += m.weight().numel() + (0 if b is None else b.numel() * b.element_size())
            elif hasattr(m, "quantized_bytes"):  # q8.Q8Linear: codes and scales (its bias is a parameter)
                total += m.quantized_bytes()
        lookup = {id(t) for t in self.wte.parameters()} if self.wte is not None else set()
        seen = {id(t): t for t in self.parameters() if id(t) not in lookup}
        return total + sum(t.numel() * t.element_size() for t in seen.values())
