"""helpers.fastgen.policy: what "auto" compiles with on each device, and when the compiler makes CUDA graphs."""

import torch

from helpers.fastgen import policy


def test_auto_compiles_on_a_gpu_only_and_leaves_graphs_to_us_when_we_capture_several_steps():
    assert policy.compile_options("auto", on_gpu=False, graph_steps=0) is None  # eager on a CPU
    assert policy.compile_options("auto", on_gpu=True, graph_steps=0) == policy.TUNED_CUDA_GRAPHS
    assert policy.compile_options("auto", on_gpu=True, graph_steps=16) == policy.TUNED  # our graphs, not its
    assert policy.compile_options(True, on_gpu=False, graph_steps=0) == "default"
    assert policy.compile_options(False, on_gpu=True, graph_steps=0) is None


def test_which_modes_make_cuda_graphs():
    assert policy.uses_cuda_graphs(policy.TUNED_CUDA_GRAPHS) and policy.uses_cuda_graphs("reduce-overhead")
    assert not policy.uses_cuda_graphs(policy.TUNED) and not policy.uses_cuda_graphs("default")
    assert not policy.uses_cuda_graphs(None)


def test_eager_is_the_step_itself():
    def step():
        return 1

    assert policy.compiled(step, None) is step


def test_compiling_allows_a_recompilation_for_every_shape_a_ladder_decodes():
    """Every FastGPT2 compiles the same Decoder.forward once per batch and cache shape; PyTorch's default limit
    of 8 recompilations made a ladder of more shapes fail (fullgraph=True raises at the limit)."""
    with torch._dynamo.config.patch(recompile_limit=8):  # PyTorch's default; the old value is back after
        policy.compiled(lambda x: x + 1, "default")  # compiles lazily: nothing runs here
        assert torch._dynamo.config.recompile_limit >= policy.RECOMPILE_LIMIT > 8
