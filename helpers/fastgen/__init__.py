"""The workbook's fast decoder for any Hugging Face ``GPT2LMHeadModel`` (the pocket model or GPT-2).

Its files follow the order notebooks 05 and 05b teach it:

1. ``model.py``: the eager decoder, plain PyTorch: a static KV cache (``KVCache``, written in place by
   ``update``, so every decode step has the same shapes), GPT-2's blocks, and one-row products written as
   multiply-and-sum (``matvec``), which the compiler fuses into one pass over each weight at batch 1.
2. ``policy.py``: how a step runs, applied from outside the model: ``torch.compile`` of one step of fixed
   shapes, with CUDA graphs on a GPU (``TUNED_CUDA_GRAPHS``: a whole step replayed as one launch instead of
   over a hundred kernel launches, which notebook 05 counts with the profiler), or several greedy steps,
   token choice included, in one CUDA graph of our own (``graph_steps``).
3. ``triton_step.py``: the hand-written decode step of Triton kernels (GPU, greedy, batch 1): three kernels
   a layer plus one. The file that imports Triton; notebook 05b builds it kernel by kernel.
   ``persistent_step.py``: the same stages in one persistent kernel a token, its programs meeting at grid
   barriers instead of kernel boundaries, the next layer's weights fetched into the L2 cache ahead of use.
   ``dataflow_step.py``: the same stages in one launch a token of the Triton step's many small programs, each
   waiting only on a count of the stage it reads (no grid barrier, no kernel boundary).
   ``stream_step.py`` (with ``stream_step.cu``): the same stages in one CUDA C++ kernel a token, whose blocks
   copy their share of the weights into shared memory ahead of use while they wait for each other (a ring
   of buffers Triton's language does not keep); compiled on the GPU by NVRTC. Not to be confused with
   ``FastGPT2.stream``, which yields tokens as they are made.
   ``batched_step.py``: the greedy step for a batch of sequences, its products on tensor cores (``tl.dot``):
   five kernels a layer plus one (notebook 06b measures where batching stops being bound by the bytes).
4. int8 weights by swapping the decoder's linear layers (``helpers.quant``): on a GPU ``Int8Linear``
   (weight-only, the dequantization fused into the product by the compiler), on a CPU PyTorch's dynamic
   int8 kernels (``torch.ao``'s FBGEMM path, notebook 03) or llama.cpp's q8_0 format through the workbook's
   own kernel (``helpers.q8``, notebook 03c).
5. ``cpu_step.py``: the CPU's hand-written decode step (q8_0 weights, greedy, batch 1): the whole token in one
   C++ call (``helpers/q8_step.cpp``), as llama.cpp runs one; notebook 03c measures what it saves.
6. ``generator.py``: ``FastGPT2``, which puts them together: options, ``generate``, ``stream``, padding.

Greedy decoding gives the same tokens as ``generate()`` (tested on the pocket model); sampling
(temperature, top-k) is reproducible with a seed. Prompts of different lengths are left-padded and
masked, as ``generate()`` does with an ``attention_mask``.

    fast = FastGPT2(model, dtype=torch.bfloat16, graph_steps=16)
    out = fast.generate(input_ids, max_new_tokens=128)
    for token in fast.stream(input_ids, 64):  # one (B,) tensor per step, as it is made (notebook 07's playground)
        ...
"""

from .batched_step import BatchedStep
from .cpu_step import CppStep
from .dataflow_step import DataflowStep
from .generator import STREAM_BLOCK, FastGPT2, ModelStep
from .model import Block, Decoder, Int8KVCache, KVCache, Linear, matvec
from .persistent_step import PersistentStep
from .policy import TUNED, TUNED_CUDA_GRAPHS
from .stream_step import StreamStep
from .triton_step import KERNEL_CONFIGS, TritonStep

__all__ = [
    "STREAM_BLOCK",
    "TUNED",
    "TUNED_CUDA_GRAPHS",
    "KERNEL_CONFIGS",
    "BatchedStep",
    "Block",
    "CppStep",
    "DataflowStep",
    "Decoder",
    "FastGPT2",
    "Int8KVCache",
    "KVCache",
    "Linear",
    "ModelStep",
    "PersistentStep",
    "StreamStep",
    "TritonStep",
    "matvec",
]
