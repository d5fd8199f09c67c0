"""Batch-1 linear layers on the GPU: cuBLAS (`torch.mm`) vs radixlm's GEMV kernel, Llama shapes, bf16.

Each layer is timed inside one CUDA graph over enough distinct weight copies (>= 600 MB) that
the 50 MB L2 cache holds none of them, so the figure is the weight-read bandwidth of a cold
layer, as in a decode step. `--sweep` also tries other tile settings of the kernel.

    python benchmarks/gemv.py [--sweep] [--shapes llama-3.2-1b]
"""

from __future__ import annotations

import argparse
import itertools
from typing import Callable

import torch

from radixlm.kernels.gemv import gemv_config, gemv_into

SHAPES = {
    "llama-3-8b": {
        "qkv": (6144, 4096),
        "o_proj": (4096, 4096),
        "gate_up": (28672, 4096),
        "down": (4096, 14336),
        "lm_head": (128256, 4096),
    },
    "llama-3.2-1b": {
        "qkv": (3072, 2048),
        "o_proj": (2048, 2048),
        "gate_up": (16384, 2048),
        "down": (2048, 8192),
        "lm_head": (128256, 2048),
    },
}


def us_per_call(calls: list[Callable[[], object]], reps: int = 3) -> float:
    """Median microseconds per call, the calls replayed `reps` times in one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            for call in calls:
                call()
    graph.replay()
    times = []
    for _ in range(11):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[5] * 1e3 / (reps * len(calls))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    a = ap.parse_args()
    print(f"device {torch.cuda.get_device_name()}")
    print("| shape | layer | N x K | MB | cuBLAS us | cuBLAS GB/s | radixlm GEMV us | GB/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in a.shapes:
        layers = SHAPES[model]
        for name, (n, k) in layers.items():
            nbytes = n * k * 2
            ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(max(2, (600 << 20) // nbytes))]
            x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
            y = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
            cublas = us_per_call([lambda w=w: torch.mm(x, w.t(), out=y) for w in ws])
            ours = us_per_call([lambda w=w: gemv_into(x, w, None, y) for w in ws])
            print(
                f"| {model} | {name} | {n} x {k} | {nbytes / 1e6:.1f} | {cublas:.1f} | {nbytes / cublas / 1e3:.0f} "
                f"| {ours:.1f} | {nbytes / ours / 1e3:.0f} | {cublas / ours:.2f}x |",
                flush=True,
            )
            if a.sweep:
                sweep(x, ws, y, n, k, nbytes)
            del ws
            torch.cuda.empty_cache()


def sweep(x: torch.Tensor, ws: list[torch.Tensor], y: torch.Tensor, n: int, k: int, nbytes: int) -> None:
    res = []
    for rows, tile, warps in itertools.product((2, 4, 8, 16), (128, 256, 512, 1024, 2048), (4, 8)):
        if k % tile or rows * tile > 8192:
            continue
        us = us_per_call([lambda w=w: gemv_into(x, w, None, y, (rows, tile, warps)) for w in ws])
        res.append((us, rows, tile, warps))
    res.sort()
    print(
        f"    sweep (default {gemv_config(n, k)}): "
        + ", ".join(f"{r}x{t} w{wp} {nbytes / us / 1e3:.0f} GB/s" for us, r, t, wp in res[:4]),
        flush=True,
    )


if __name__ == "__main__":
    main()
