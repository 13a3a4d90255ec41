"""helpers.fastgen's dataflow decode step (one kernel launch a token, tasks meeting at counts), against the eager
decoder.

Without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set by ``conftest.py``), which runs
a grid's programs one after another in the order of their tickets: every wait finds the stage it needs done, so
the tests check the tasks' arithmetic, their numbering and the counts; on a GPU the same tests run with tasks that
really wait.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="Triton installs with the dev extra on Linux x86-64 only")
if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("the kernel needs a CUDA GPU or Triton's interpreter (TRITON_INTERPRET=1)", allow_module_level=True)

from helpers import fastgen  # noqa: E402  (after the interpreter flag: the kernels are defined at import)
from helpers.fastgen import dataflow_step  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def small_tasks(monkeypatch):
    """Tasks smaller than a head's share, more output-layer tasks than a layer has (as GPT-2's 3,142 against 624),
    and attention over several blocks of the cache (the online softmax's rescale)."""
    monkeypatch.setattr(dataflow_step, "TASK_ROWS", {"qkv": 8, "attn": 16, "mlp": 16, "head": 4})
    monkeypatch.setattr(dataflow_step, "ATTN_BLOCK", 16)


@pytest.mark.parametrize("ticket, stage_counts", [(True, False), (False, False), (True, True), (False, True)])
def test_one_step_gives_the_eager_residual_and_token(small_tasks, monkeypatch, ticket, stage_counts, sharp_gpt2):
    monkeypatch.setattr(dataflow_step, "TICKET", ticket)
    monkeypatch.setattr(dataflow_step, "STAGE_COUNTS", stage_counts)
    decoder = fastgen.Decoder(sharp_gpt2(n_head=2), torch.float32)
    n = 34  # cached positions 0..34: three blocks of 16
    prompt = torch.randint(0, 300, (1, n), generator=torch.Generator().manual_seed(2)).to(DEV)
    decoder.setup_caches(1, 40)
    decoder(prompt, decoder.arange[:n])
    tok, pos = torch.tensor([[7]], device=DEV), torch.tensor([n], device=DEV)
    out = torch.zeros(1, 40, dtype=torch.long, device=DEV)
    step = dataflow_step.DataflowStep(decoder, tok, pos, out)
    step()
    ids = torch.tensor([[7]], device=DEV)
    hidden = decoder.hidden(ids, decoder.arange[n : n + 1])[0, -1]  # the eager step, same token and position
    logits = decoder(ids, decoder.arange[n : n + 1])[0]
    torch.testing.assert_close(step.x[decoder.config.n_layer % 2], hidden, rtol=1e-4, atol=1e-5)
    assert out[0, n + 1] == logits.argmax() and tok.item() == logits.argmax() and pos.item() == n + 1
    assert not step.counts.any()  # every count back to 0 for the next token, no wait gave up
    step.check()


def test_the_dataflow_step_generates_the_eager_decoders_tokens(small_tasks, sharp_gpt2):
    model = sharp_gpt2(n_head=2)
    fast = fastgen.FastGPT2(model, kernels="dataflow")
    assert fast.kernels and fast.one_launch == "dataflow" and fast.batched_upto == 0
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(1)).to(DEV)
    assert torch.equal(fast.generate(ids, 6), fastgen.FastGPT2(model).generate(ids, 6))


@pytest.mark.parametrize("stage_counts", [False, True])
def test_a_wait_that_cannot_fill_gives_up_and_says_so(small_tasks, monkeypatch, stage_counts, sharp_gpt2):
    """A count that starts far below zero never reaches its target: the first wait on it gives up after
    WAIT_LIMIT polls, raises the flag and lets the other waits pass, and check() says so (instead of a hang)."""
    monkeypatch.setattr(dataflow_step, "WAIT_LIMIT", 4)
    monkeypatch.setattr(dataflow_step, "STAGE_COUNTS", stage_counts)
    decoder = fastgen.Decoder(sharp_gpt2(n_head=2), torch.float32)
    decoder.setup_caches(1, 40)
    tok, pos = torch.tensor([[7]], device=DEV), torch.tensor([0], device=DEV)
    step = dataflow_step.DataflowStep(decoder, tok, pos, torch.zeros(1, 40, dtype=torch.long, device=DEV))
    stuck = 4 if stage_counts else 0  # the count the first layer's q, k, v tasks arrive at
    step.counts[stuck] = -(1 << 20)
    step()
    gave_up = getattr(dataflow_step.GAVE_UP, "value", dataflow_step.GAVE_UP)  # a Triton constexpr: its number
    assert step.counts[2] == 1 and step.counts[stuck] >= gave_up - (1 << 20)  # flagged; the waits on it pass
    with pytest.raises(RuntimeError, match="a wait gave up"):
        step.check()
    assert not step.counts.any()  # read and cleared: the next steps wait again


@pytest.mark.skipif(DEV == "cuda", reason="records the waits in Triton's interpreter, which runs tasks in order")
@pytest.mark.parametrize("stage_counts", [False, True])
def test_each_task_waits_for_exactly_the_stage_before_it(
    small_tasks, monkeypatch, stage_counts, interpreted, sharp_gpt2
):
    """The interpreter runs tasks in ticket order, so every wait passes, even one with a wrong target: record what
    each wait sees instead. With a count per stage, a task's wait must find its count exactly at the target (the
    whole stage before, no more: the count of a later stage would be 0, an earlier stage's would be short of the
    target or past it); with one count of all tasks, the k-th task of a stage must find the target plus k (the
    output layer's tasks: the target)."""
    monkeypatch.setattr(dataflow_step, "STAGE_COUNTS", stage_counts)
    decoder = fastgen.Decoder(sharp_gpt2(n_head=2), torch.float32)
    decoder.setup_caches(1, 40)
    tok, pos = torch.tensor([[7]], device=DEV), torch.tensor([20], device=DEV)
    step = dataflow_step.DataflowStep(decoder, tok, pos, torch.zeros(1, 40, dtype=torch.long, device=DEV))
    waits = []  # (which count, its value, the target)

    def record(count_ptr, target, flag_ptr, LIMIT, BACKOFF):
        at = (int(interpreted(count_ptr).item()) - step.counts.data_ptr()) // step.counts.element_size()
        waits.append((at, int(step.counts[at]), int(interpreted(target).item())))

    monkeypatch.setattr(dataflow_step, "_wait", record)
    step()
    m, n_layer = step.meta, decoder.config.n_layer
    stages = [m["T_QKV"], m["T_ATT"], m["T_MLP"]] * n_layer + [m["T_HEAD"]]  # tasks of each stage, in order
    assert len(waits) == sum(stages) - stages[0]  # every task but the first layer's q, k, v waits once
    expected, done = [], 0
    for s in range(1, len(stages)):
        done += stages[s - 1]
        for k in range(stages[s]):
            seen = done + k * (s < len(stages) - 1)  # (the output layer's tasks arrive at a count of their own)
            expected.append((4 + s - 1, stages[s - 1], stages[s - 1]) if stage_counts else (0, seen, done))
    assert waits == expected


def test_bad_settings_are_refused(sharp_gpt2):
    decoder = fastgen.Decoder(sharp_gpt2(n_head=2), torch.float32)
    decoder.setup_caches(2, 40)
    t = torch.zeros(1, 1, dtype=torch.long, device=DEV)
    with pytest.raises(ValueError, match="batch 1"):
        dataflow_step.DataflowStep(decoder, t, t[0], t)
    with pytest.raises(ValueError, match="kernels takes"):
        fastgen.FastGPT2(sharp_gpt2(n_head=2), kernels="data-flow")
    if DEV == "cpu":
        with pytest.raises(ValueError, match="kernels='dataflow' is a GPU step"):
            fastgen.FastGPT2(sharp_gpt2(n_head=2).float(), int8="q8_0", kernels="dataflow")


COMPILE = """
import inspect, sys
import triton
from triton.backends.compiler import GPUTarget
from helpers.fastgen import dataflow_step

fn = dataflow_step._dataflow_kernel
names = list(inspect.signature(fn.fn).parameters)
pointers = dict(table="*i64", tok_ptr="*i64", pos_ptr="*i64", out_ptr="*i64", counts_ptr="*i32")
rows = dataflow_step.TASK_ROWS  # the step's own task sizes, GPT-2 124M's shapes (12 layers, 768 wide, 12 heads)
consts = dict(
    N_LAYER=12, C=768, HEAD_DIM=64, T_QKV=2304 // rows["qkv"], T_ATT=12 * triton.cdiv(768, rows["attn"]),
    T_MLP=3072 // rows["mlp"], T_HEAD=triton.cdiv(50257, rows["head"]), QKV_ROWS=rows["qkv"], ATT_ROWS=rows["attn"],
    MLP_ROWS=rows["mlp"], HEAD_ROWS=rows["head"], BLOCK_K=1024, BLOCK_L=256, N_BLOCKS=1,
    BLOCK_P=triton.next_power_of_2(triton.cdiv(50257, rows["head"])), BLOCK_S=64, TICKET=True,
    STAGE_COUNTS=sys.argv[1] == "1", LIMIT=1 << 22, BACKOFF=int(sys.argv[2]),
)
signature = {
    n: "constexpr" if n in consts else pointers.get(n, "*fp32" if n in ("x_ptr", "x2_ptr", "q_ptr", "best_ptr")
    else "*bf16" if n.endswith("_ptr") else "fp32" if n in ("scale", "eps") else "i32")
    for n in names
}
constexprs = {(names.index(k),): v for k, v in consts.items()}
src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
print("compiled")
"""


@pytest.mark.parametrize("stage_counts, backoff", [(False, 0), (True, 100)])
def test_the_kernel_compiles_for_a_hopper_gpu(stage_counts, backoff):
    """Triton's interpreter runs the kernel's Python, not its compiler: a kernel can pass every interpreted test
    and still fail to compile on a GPU (it did once: a name given two shapes in two branches). So compile it for
    an H100 (compute capability 9.0) here too, in a process without the interpreter, GPT-2 124M's shapes."""
    compiler = importlib.util.find_spec("triton.backends.nvidia")
    if compiler is None:
        pytest.skip("this Triton has no CUDA backend to compile with")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", COMPILE, str(int(stage_counts)), str(backoff)],
        env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
