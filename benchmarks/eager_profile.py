"""Where the host time of an eager (no CUDA graph) batch-1 decode step goes (Llama-3.2-1B shape,
dummy bf16 weights, 256-token context): host and wall ms per step over 20 steps, then cProfile
(sorted by own and by cumulative time) and torch.profiler's CPU op table over the same steps.
Every extend/prefill forward runs this way, so this is the host cost a short prompt pays.

    python benchmarks/eager_profile.py > eager_profile.txt

cProfile undercounts inside torch's custom-op and dynamo-disable wrappers (their frames are
partly hidden from it). Eager GEMV launches skip the `radixlm::gemv` custom op (only
torch.compile traces dispatch it), so they do not show as an op in torch.profiler's table;
their host time is in the Triton launcher's frames.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_bench import decode_setup, model_dir  # noqa: E402


def main(steps: int = 20) -> None:
    runner, decode = decode_setup(model_dir("llama-3.2-1b"), 256, graphs=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.forward(decode)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    print(f"eager decode: host {1e3 * (t1 - t0) / steps:.2f} ms/step, wall {1e3 * (t2 - t0) / steps:.2f} ms/step")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        runner.forward(decode)
    torch.cuda.synchronize()
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(45)
    stats.sort_stats("cumulative").print_stats(60)
    # The first step is profiled but not recorded: the first op after the profiler starts can be
    # charged with the profiler's start-up time (here the embedding lookup, once per step).
    schedule = torch.profiler.schedule(wait=0, warmup=1, active=5)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=schedule) as tprof:
        for _ in range(6):
            runner.forward(decode)
            tprof.step()
        torch.cuda.synchronize()
    print(tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))


if __name__ == "__main__":
    main()
