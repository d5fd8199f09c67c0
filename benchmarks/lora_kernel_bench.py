"""Microseconds per projection of the LoRA term at decode, inside a CUDA graph: the shrink +
expand pair (`triton_ops`) as the engine launches it ("pair": programmatic dependent launch at
decode sizes on Hopper) and with PDL off ("nopdl"), on the Llama-3-8B projections (q/k/v, o,
gate/up, down), 32 layers' worth per graph replay.

    python benchmarks/lora_kernel_bench.py            # GPU only
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's radixlm

import torch  # noqa: E402

# name: (K, local output size of each fused part)
PROJECTIONS = {
    "qkv": (4096, (4096, 1024, 1024)),
    "o": (4096, (4096,)),
    "gate_up": (4096, (14336, 14336)),
    "down": (14336, (4096,)),
}


def _graph_us(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    """Microseconds per call of `fn`, captured `reps` times in one graph (launch cost included)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (10 * reps)


def bench(rows: int, adapters: int, rank: int, slots: int, reps: int) -> None:
    from radixlm.lora import triton_ops
    from radixlm.lora.batch_info import LoraBatchInfo

    dev = torch.device("cuda")
    info = LoraBatchInfo(max_tokens=256, device=dev, num_slots=slots)
    info.set_rows([i % adapters for i in range(rows)], [1] * rows)
    seg = info.segments(rows)
    scales = torch.ones(slots, device=dev)
    line = [f"rows {rows:3d} adapters {adapters}:"]
    for name, (k, parts) in PROJECTIONS.items():
        n, width = sum(parts), len(parts) * rank
        a = torch.randn(slots, width, k, device=dev, dtype=torch.bfloat16) * 0.01
        b = torch.randn(slots, n, width, device=dev, dtype=torch.bfloat16) * 0.01
        x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
        out = torch.zeros(rows, n, device=dev, dtype=torch.bfloat16)
        bounds = tuple(list(torch.tensor(parts).cumsum(0)[:-1].tolist()) + [n] * (3 - len(parts)))[:2]

        def pair() -> None:
            triton_ops.expand_add(out, triton_ops.shrink(x, a, seg), b, scales, seg, bounds, rank)

        times = {"pair": _graph_us(pair, reps)}
        launch = triton_ops.pdl_launch
        triton_ops.pdl_launch = lambda t, rows: {"PDL": False, "launch_pdl": False}  # the same kernels, PDL off
        try:
            times["nopdl"] = _graph_us(pair, reps)
        finally:
            triton_ops.pdl_launch = launch
        line.append(f"{name} " + " ".join(f"{k}={v:.1f}" for k, v in times.items()))
    print("  ".join(line), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--reps", type=int, default=32, help="calls per graph (one per layer)")
    a = ap.parse_args()
    for rows, adapters in ((1, 1), (4, 4), (8, 1), (8, 8), (16, 8)):
        bench(rows, adapters, a.rank, a.slots, a.reps)


if __name__ == "__main__":
    main()
