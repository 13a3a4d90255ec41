"""How a decode step is run, applied from outside the model: compiled or eager, and CUDA graphs.

The model (``model.py``) knows nothing of this: its ``forward`` is plain PyTorch. Here it is wrapped:

- ``compile_options``: what ``compile="auto"`` means on a device (``TUNED_CUDA_GRAPHS`` on a GPU, eager
  on a CPU), and when CUDA graphs are the compiler's to make (``uses_cuda_graphs``);
- ``compiled``: ``torch.compile`` of a step with fixed shapes (``fullgraph=True, dynamic=False``);
- ``CapturedSteps``: several greedy decode steps, token choice included, recorded in one CUDA graph by us
  (``graph_steps``), so that Python launches one graph per that many tokens.
- ``CapturedPrefill``: the prompt's pass (the prefill) recorded in a CUDA graph for one prompt shape: eager, it
  launches a few hundred small kernels, and at a short prompt the GPU waits for Python between them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# What "auto" compiles with on a GPU: CUDA graphs (as mode="reduce-overhead") plus inductor's coordinate-descent
# tuning of each generated kernel's launch configuration, the setting gpt-fast uses for decoding.
TUNED_CUDA_GRAPHS = {"triton.cudagraphs": True, "coordinate_descent_tuning": True}
TUNED = {"coordinate_descent_tuning": True}  # the same without CUDA graphs: for steps we capture ourselves


def compile_options(compile, on_gpu: bool, graph_steps: int):
    """The ``torch.compile`` mode (a string) or options (a dict) for a ``compile`` setting, or None for eager.

    ``"auto"``: on a GPU, ``TUNED`` when we capture several steps per graph ourselves (the compiler must not
    capture graphs inside ours), else ``TUNED_CUDA_GRAPHS``; on a CPU, eager. ``True``: ``"default"``.
    """
    if compile == "auto":
        compile = (TUNED if graph_steps > 1 else TUNED_CUDA_GRAPHS) if on_gpu else False
    return "default" if compile is True else (compile or None)


def uses_cuda_graphs(mode) -> bool:
    """Whether ``torch.compile`` with this mode or these options records CUDA graphs itself."""
    return mode in ("reduce-overhead", "max-autotune") or (
        isinstance(mode, dict) and bool(mode.get("triton.cudagraphs"))
    )


# Recompilations the compiler allows one function before it gives up (with fullgraph=True it raises). Every
# FastGPT2 compiles the same ``Decoder.forward`` again (its own decoder, and each shape of batch and cache it
# decodes), and PyTorch's default of 8 stopped an H100 ladder of 9 compiled decoders (3 at batch 1, 6 batches) in
# one process (2026-12-07). ``compiled`` raises the limit to this for the whole process (a torch setting).
RECOMPILE_LIMIT = 64


def compiled(step: Callable, mode) -> Callable:
    """``step`` compiled with ``mode`` (a string or an options dict; None leaves it eager), shapes fixed."""
    if mode is None:
        return step
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if isinstance(mode, dict):
        return torch.compile(step, options=mode, fullgraph=True, dynamic=False)
    return torch.compile(step, mode=mode, fullgraph=True, dynamic=False)


class CapturedSteps:
    """``k`` calls of ``step`` recorded in one CUDA graph; ``replay()`` runs them with a single launch.

    ``step`` must read and write preallocated tensors only (a graph replays fixed addresses). ``reset`` puts
    the state back (the position) before the warm-up and the capture: both run real steps, whose writes the
    prefill and decoding then overwrite. The warm-up (compilation included) runs on a side stream, as
    capture requires.
    """

    def __init__(self, step: Callable[[], None], k: int, device: torch.device, reset: Callable[[], None]):
        def steps():
            for _ in range(k):
                step()

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                reset()
                steps()
        torch.cuda.current_stream(device).wait_stream(side)
        reset()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            steps()

    def replay(self) -> None:
        self.graph.replay()


class CapturedPrefill:
    """``prefill(ids, positions)`` for prompts of one shape (B, T), recorded in a CUDA graph; calling it copies
    ``ids`` into the graph's input and replays it: one launch instead of one per operation.

    ``prefill`` must read and write preallocated tensors only besides ``ids`` (the KV cache, the padding):
    its warm-up runs on a side stream, and what it writes into the cache the real call writes again.
    ``positions`` (T,) must be a tensor that stays where it is (a slice of the decoder's ``arange``). The
    logits returned are the graph's own output tensor, overwritten by the next call: use them before then.
    """

    def __init__(self, prefill: Callable, shape: tuple[int, int], positions: torch.Tensor, device):
        self.ids = torch.zeros(shape, dtype=torch.long, device=device)  # (B, T): the graph's input
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                prefill(self.ids, positions)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = prefill(self.ids, positions)  # (B, V)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(ids)
        self.graph.replay()
        return self.logits
