"""Batch-1 decode step: the GPU's own time vs the host's, with CUDA graphs (dummy weights, bf16).

Times 200 calls issued back to back (no synchronization between them), on the host clock and
with CUDA events, for: the runner's whole `forward` (four input copies into the graph's
buffers, then the replay), the graph replay alone, and the four copies alone. When the host
time per call is below the GPU's, the host stays ahead and the GPU figure is the step's own
time; `gpu_bench.py`'s older decode figure timed each step alone from an idle GPU, which adds
the host's launch work to it. "forward, one copy" is the same step with the batch's inputs
as one [4, B] block (`ForwardBatch.decode_inputs`, as the scheduler builds it), which
`CudaGraphRunner.load_inputs` takes in one copy instead of four.

    python benchmarks/decode_host_gap.py
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_bench import decode_setup, model_dir  # noqa: E402


def timed(fn: Callable[[], object], n: int = 200) -> tuple[float, float]:
    """(host µs per call, GPU µs per call) over n calls issued back to back."""
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    s.record()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    e.record()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6, s.elapsed_time(e) / n * 1e3


def one_copy(decode: object) -> object:
    """`decode` with its four graph inputs as the rows of one block, as `build_decode` makes it."""
    block = torch.stack([decode.input_ids, decode.positions, decode.out_cache_loc, decode.req_pool_indices])
    return dataclasses.replace(
        decode,
        input_ids=block[0],
        positions=block[1],
        out_cache_loc=block[2],
        req_pool_indices=block[3],
        decode_inputs=block,
    )


def main() -> None:
    for shape in ("llama-3.2-1b", "llama-3-8b"):
        runner, decode = decode_setup(model_dir(shape), 256, graphs=True)
        g = runner.graphs
        graph = next(iter(g.graphs.values())) if len(g.graphs) == 1 else g.graphs[1, False, False]
        one = one_copy(decode)
        for name, fn in (
            ("forward", lambda: runner.forward(decode)),
            ("forward, one copy", lambda: runner.forward(one)),
            ("forward (again)", lambda: runner.forward(decode)),
            ("forward, one copy (again)", lambda: runner.forward(one)),
            ("replay only", graph.replay),
            ("copy_ x4", lambda: [g.input_ids[:1].copy_(decode.input_ids) for _ in range(4)]),
        ):
            host, gpu = timed(fn)
            print(f"{shape} {name}: host {host:.1f} us/call, GPU (events) {gpu:.1f} us/call", flush=True)
        runner = None  # free its GPU memory before the next shape
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
