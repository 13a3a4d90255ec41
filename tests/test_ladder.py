"""The ladder's table and its verdict on the workbook's targets (the measuring itself runs in notebook 05)."""

from helpers import device as devices
from helpers import ladder


def record(label, tok_s, device="cuda", sol=0.3):
    return {"label": label, "decode_tok_s": tok_s, "device": device, "sol_fraction": sol, "ttft_ms": 5.0}


def with_ratios(records):
    for r in records:
        r["ratio"] = r["decode_tok_s"] / records[0]["decode_tok_s"]
    return records


def test_gpu_targets_are_checked_against_the_right_rows():
    records = with_ratios(
        [
            record("generate(), fp32 eager", 100),
            record("generate(), bf16, static cache + compile", 500),
            record("FastGPT2, bf16, compiled + CUDA graphs", 3100),
        ]
    )
    lines = ladder.verdict(records)
    assert len(lines) == 5
    assert lines[0].startswith("[met]") and "3,100" in lines[0]
    assert lines[1].startswith("[met]")  # 30% of the limit
    assert lines[2].startswith("[met]")  # 6.2x the best generate() (500)
    assert lines[3].startswith("[met]")  # 31x fp32 eager
    assert lines[4].startswith("[not checked]")  # a run recorded before the TTFT spread (and target) existed
    records[2].update(ttft_ms_min=4.9, ttft_ms_max=5.1)
    line = ladder.verdict(records)[4]
    assert line.startswith("[met]") and "5.00 ms (4.90-5.10) <=" in line  # a tie with the others
    records[2]["decode_tok_s"] = 2900
    assert ladder.verdict(records)[0].startswith("[NOT met]")
    assert ladder.verdict(records)[2].startswith("[NOT met]")  # 5.8x
    records[1].update(ttft_ms=4.0, ttft_ms_min=3.9, ttft_ms_max=4.2)  # another row starts sooner
    line = ladder.verdict(records)[4]
    assert line.startswith("[NOT met]") and "above" in line and "4.00 ms (3.90-4.20)" in line and "static" in line
    records[2].update(ttft_ms_min=4.1, ttft_ms_max=5.5)  # the fast row's fastest run within the other's range
    assert records[2]["ttft_ms"] > records[1]["ttft_ms"]
    line = ladder.verdict(records)[4]
    assert line.startswith("[met]") and "within the runs' spread" in line


def test_cpu_target_uses_the_fastest_row():
    records = with_ratios(
        [
            record("generate(), fp32 eager", 25, "cpu"),
            record("FastGPT2, fp32, eager", 60, "cpu"),
            record("FastGPT2, int8 weights (dynamic int8), eager", 110, "cpu"),
        ]
    )
    for r in records:
        r["cpu"] = "AMD EPYC, 2 threads, AVX2, FMA"
    (line,) = ladder.verdict(records)
    assert line.startswith("[met]") and "int8" in line and "4.40x" in line
    assert line.endswith("on AMD EPYC, 2 threads, AVX2, FMA")  # the targets line names the CPU and its ISA
    table = ladder.table(records)
    assert table.splitlines()[0].startswith("| setup | tokens/s")
    assert "| FastGPT2, int8 weights (dynamic int8), eager | 110 | 4.40x |" in table


def test_gpu_rows_follow_the_capability(monkeypatch):
    """A T4 (7.5) gets fp16 rows and no Triton step; a Hopper GPU gets bf16 rows and the step."""
    t4 = [label for label, *_ in ladder._rows(None, None, True, half="fp16", triton_step=False)]
    h100 = [label for label, *_ in ladder._rows(None, None, True, half="bf16", triton_step=True)]
    assert "generate(), fp16 eager" in t4 and not any("Triton" in x for x in t4)
    assert any("Triton" in x for x in h100) and len(h100) == len(t4) + 1
    assert t4[-1].startswith("FastGPT2, int8")
    # --persistent adds the rows of the three one-launch steps after the Triton step's, where it was checked
    with_persistent = [label for label, *_ in ladder._rows(None, None, True, half="bf16", persistent=True)]
    one_launch = [
        f"FastGPT2, bf16, one {name} kernel a token, 16 steps per CUDA graph"
        for name in ("persistent Triton", "dataflow Triton", "streaming CUDA")
    ]
    assert with_persistent == h100[:6] + one_launch + h100[6:]
    rows = ladder._rows(None, None, True, half="bf16", persistent=True)
    built = {}  # each row builds the FastGPT2 of its own step (the lambdas do not share the loop's last value)
    monkeypatch.setattr(ladder.fastgen, "FastGPT2", lambda base, **kw: kw["kernels"])
    for label, _, make, _ in rows[6:9]:
        built[label] = make()
    assert list(built.values()) == ["persistent", "dataflow", "stream"]
    # where the streaming step's kernel cannot run (stream_step.why_not), its row is left out
    no_stream = [label for label, *_ in ladder._rows(None, None, True, half="bf16", persistent=True, stream=False)]
    assert no_stream == h100[:6] + one_launch[:2] + h100[6:]
    assert [
        label for label, *_ in ladder._rows(None, None, True, half="fp16", triton_step=False, persistent=True)
    ] == t4


def test_a_cpu_run_names_its_cpu_with_its_instruction_sets(monkeypatch):
    """The rows of a CPU run carry the CPU's summary (model, threads, instruction sets): the targets line
    printed right after the run names it, as recorded rows do."""
    monkeypatch.setattr(ladder.models, "load", lambda *a, **k: (None, None))
    monkeypatch.setattr(ladder.devices, "bandwidth", lambda dev: 1e10)
    monkeypatch.setattr(ladder, "_rows", lambda *a, **k: [("generate(), fp32 eager", None, lambda: None, None)])
    monkeypatch.setattr(ladder.bench, "generation", lambda *a, **k: record(k["label"], 25.0, "cpu"))
    records = ladder.run(device="cpu", progress=False)
    assert records[0]["cpu"] == devices.cpu_summary() and records[0]["ratio"] == 1.0
    assert ladder.verdict(records + [record("FastGPT2, x", 110, "cpu")])[0].endswith(devices.cpu_summary())


def test_batch_rows_get_their_own_target_and_stay_out_of_the_batch_1_targets():
    def batch_row(label, tok_s, b):
        return {**record(label, tok_s), "batch": b, "decode_tok_s_min": tok_s * 0.9, "decode_tok_s_max": tok_s * 1.1}

    records = with_ratios(
        [
            record("generate(), fp32 eager", 100),
            record("generate(), bf16, static cache + compile", 500),
            record("FastGPT2, bf16, compiled + CUDA graphs", 3100),
            batch_row("FastGPT2, bf16, compiled, 16 steps per CUDA graph, batch 8", 20_000, 8),
            batch_row("FastGPT2, bf16, batched Triton step, 16 steps per CUDA graph, batch 8", 30_000, 8),
            batch_row("FastGPT2, bf16, compiled, 16 steps per CUDA graph, batch 64", 150_000, 64),
            batch_row("FastGPT2, bf16, batched Triton step, 16 steps per CUDA graph, batch 64", 120_000, 64),
        ]
    )
    lines = ladder.verdict(records)
    assert "3,100" in lines[0]  # the batch-1 fast decoder, not a batch row's tokens/s
    eight, sixty_four = lines[-2], lines[-1]
    assert eight.startswith("[met] batch 8") and "1.50x" in eight and " ahead of " in eight
    assert " not ahead of " not in eight
    assert sixty_four.startswith("[NOT met] batch 64") and "0.80x" in sixty_four and " not ahead of " in sixty_four
