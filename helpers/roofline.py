"""The roofline: is a decode step bound by the bytes it reads, or by its arithmetic?

    python -m helpers.roofline                    # on a GPU: the hand-written steps at batches 1 to 256
    python -m helpers.roofline --record           # keep the rows in results/recorded/roofline--<device>.jsonl

A decode step reads every weight once, whatever the batch, and multiplies each weight once per sequence. Its
*arithmetic intensity* (FLOPs per byte read) therefore grows with the batch. A device sustains at most its
memory bandwidth times the intensity (the slanted roof) and at most its peak arithmetic rate (the flat roof);
they meet at the *ridge*, peak / bandwidth FLOPs per byte. Below the ridge a step is bound by its bytes
(doubling the batch nearly doubles the tokens a second), above it by arithmetic (more sequences cost
proportionally more time). Both roofs here are measured on the device: ``device.bandwidth`` (a large copy) and
``device.matmul_flops`` (a large matrix product in the step's dtype). Notebook 06b draws the points.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from tqdm.auto import tqdm

from . import bench, models, results
from . import device as devices

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # each doubles the one before


def achieved(rec: dict) -> float:
    """FLOP/s a ``bench.generation`` record's decode step sustained: its FLOPs times steps a second (a step
    makes one token per sequence)."""
    return rec["flops_per_step"] * rec["decode_tok_s"] / rec["batch"]


def intensity(rec: dict) -> float:
    """FLOPs per byte of a record's decode step: its FLOPs (``bench.step_flops``) over the bytes it reads."""
    return rec["flops_per_step"] / rec["bytes_per_step"]


def ridge(bandwidth: float, peak: float) -> float:
    """FLOPs per byte where the two roofs meet: below it a step is bound by bytes, above it by arithmetic."""
    return peak / bandwidth


def roof(x: float, bandwidth: float, peak: float) -> float:
    """The most FLOP/s a step of intensity ``x`` can sustain: the lower of the two roofs."""
    return min(peak, x * bandwidth)


def bound(rec: dict) -> str:
    """What bounds a record's step by the roofline: "bytes" below the ridge, "arithmetic" at or above it."""
    return "bytes" if intensity(rec) < ridge(rec["bandwidth_GBs"] * 1e9, rec["peak_flops"]) else "arithmetic"


def run(model_name: str = "gpt2-124m-random", batches=BATCHES, new_tokens: int = 64, repeats: int = 3) -> list[dict]:
    """The hand-written greedy step (the Triton step at batch 1, the batched step above) at each batch, on this
    GPU in bf16: ``bench.generation`` records (which carry the step's FLOPs) with the device's measured peak."""
    from . import fastgen
    from .ladder import GRAPH_STEPS

    dev = devices.pick("cuda")
    model, tok = models.load(model_name, device=dev, dtype=torch.bfloat16, verbose=False)
    bw, peak = devices.bandwidth(dev), devices.matmul_flops(dev, torch.bfloat16)
    rows = []
    for b in tqdm(batches, desc="batches"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = fastgen.FastGPT2(model, graph_steps=GRAPH_STEPS, kernels=True)
            rec = bench.generation(
                model, tok, prompt_len=32, new_tokens=new_tokens, batch=b, warmup=1, repeats=repeats,
                generate_fn=fast.generate_fn(), label=f"hand-written step, batch {b}", model_name=model_name,
                bandwidth=bw, model_bytes=fast.weight_bytes(),
            )  # fmt: skip
        rec["peak_flops"] = peak
        rows.append(rec)
        del fast
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-124m-random", help="a model name of helpers.models")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--record", action="store_true", help="keep the rows in results/recorded/ (committed)")
    args = parser.parse_args(argv)
    if min(args.batches) < 1:
        parser.error(f"batches must be at least 1, got {min(args.batches)}")
    if not torch.cuda.is_available():
        parser.error("the roofline times the GPU's hand-written steps: torch sees no CUDA GPU here")
    if args.record:
        results.start_recording("roofline", argv)
    rows = run(args.model, args.batches)
    print(f"ridge: {ridge(rows[0]['bandwidth_GBs'] * 1e9, rows[0]['peak_flops']):,.0f} FLOPs per byte")
    for r in rows:
        results.record(r, notebook="roofline", technique=r["label"])
        print(
            f"batch {r['batch']}: {r['decode_tok_s']:,.0f} tokens/s, {intensity(r):,.1f} FLOPs/byte, "
            f"{achieved(r) / 1e12:,.2f} TFLOP/s ({bound(r)}-bound by the roofline)"
        )


if __name__ == "__main__":
    main()
