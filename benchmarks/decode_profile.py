"""Where a batch-1 decode step's GPU time goes: every kernel of the step (CUDA graphs, dummy
weights, bf16) from the PyTorch profiler, grouped by kernel name, against the step's wall time.

Each kernel is charged the time it adds to the step's timeline (kernels overlap under
programmatic dependent launch); what no kernel covers is idle GPU. A kernel's share says what
to fuse or speed up next. The profiler itself slows each launch: on an H200 the profiled span
was ~200 µs per step longer than the same steps unprofiled (`decode_host_gap.py`), so the idle
line is mostly the profiler's, and the kernel rows are upper bounds.

    python benchmarks/decode_profile.py [--shapes llama-3.2-1b llama-3-8b] [--steps 20]
    python benchmarks/decode_profile.py --shapes qwen3-30b-a3b   # a MoE shape of moe_gpu_bench.py
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
import moe_gpu_bench  # noqa: E402
from gpu_bench import SHAPES, decode_setup, model_dir, time_cuda  # noqa: E402


def any_model_dir(shape: str) -> str:
    """The model directory of a dense shape (`gpu_bench`) or a MoE one (`moe_gpu_bench`)."""
    return moe_gpu_bench.model_dir(shape) if shape in moe_gpu_bench.SHAPES else model_dir(shape)


def kernel_table(runner: object, decode: object, steps: int) -> tuple[dict[str, list[float]], float]:
    """{kernel name: [launches, µs, critical-path µs]} per step over `steps` profiled steps, and
    the span (µs) from the first kernel's start to the last one's end, per step.

    With programmatic dependent launch a kernel starts while the one before it runs and waits,
    so its own duration overlaps its neighbours'; its critical-path time is what it adds to the
    timeline: its end minus the later of its start and every earlier kernel's end. Those add up
    to the time the GPU ran any kernel; the span minus that is idle."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            runner.forward(decode)
        torch.cuda.synchronize()
    kernels = sorted(
        (ev.time_range.start, ev.time_range.end, ev.name)
        for ev in prof.events()
        if ev.device_type == torch.autograd.DeviceType.CUDA
    )
    per: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    done = float("-inf")
    for start, end, name in kernels:
        row = per[name]
        row[0] += 1
        row[1] += end - start
        row[2] += max(0.0, end - max(start, done))
        done = max(done, end)
    span = (max(end for _, end, _ in kernels) - kernels[0][0]) / steps if kernels else 0.0
    return {name: [v / steps for v in row] for name, row in per.items()}, span


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes = list(SHAPES) + list(moe_gpu_bench.SHAPES)
    ap.add_argument("--shapes", nargs="+", default=["llama-3.2-1b", "llama-3-8b"], choices=shapes)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--context", type=int, default=256)
    a = ap.parse_args()
    for shape in a.shapes:
        runner, decode = decode_setup(any_model_dir(shape), a.context, graphs=True)
        step_us = time_cuda(lambda: runner.forward(decode), 50) * 1e3
        table, span = kernel_table(runner, decode, a.steps)
        busy = sum(row[2] for row in table.values())
        print(
            f"{shape}: step {step_us:.0f} us (events), profiled span {span:.0f} us, some kernel running "
            f"{busy:.0f} us of it, {sum(row[0] for row in table.values()):.0f} launches per step"
        )
        print(
            "| kernel | launches/step | duration us/step | critical-path us/step | share of step |\n"
            "|---|---|---|---|---|"
        )
        for name, (n, us, crit) in sorted(table.items(), key=lambda kv: -kv[1][2]):
            print(f"| {name[:80]} | {n:.0f} | {us:.1f} | {crit:.1f} | {crit / span:.1%} |")
        print(f"| (idle) | | | {span - busy:.1f} | {(span - busy) / span:.1%} |")
        runner = None  # free its GPU memory before the next shape
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
