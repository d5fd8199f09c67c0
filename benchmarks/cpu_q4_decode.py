"""Decode step time of the bundled SmolLM2-135M on the CPU: the default load (float32, dequantized)
against `--quantization gguf` (Q4_1 linears and the tied Q8_0 LM head multiplied in their blocks,
`kernels/cpu_q4.c`) and against gguf with the LM head put back on the float32 embedding
("gguf-float-head"), straight through `ModelRunner` (no scheduler), 3 alternations, medians.

    python benchmarks/cpu_q4_decode.py --threads 1 --batch-sizes 1 32 --steps 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's radixlm

import torch  # noqa: E402

from radixlm.bench import one_batch as ob  # noqa: E402
from radixlm.config.bundled import bundled_model_path  # noqa: E402
from radixlm.config.server_args import ServerArgs  # noqa: E402
from radixlm.executor.model_runner import ModelRunner  # noqa: E402

PROMPT = 55


def runner(quantization: str | None, threads: int, max_bs: int) -> ModelRunner:
    args = ServerArgs(
        model_path=bundled_model_path(),
        device="cpu",
        num_threads=threads,
        quantization=quantization,
        max_total_tokens=(max_bs + 1) * 200,
        max_running_requests=max_bs + 1,
        context_length=190,
        log_level="warning",
    )
    return ModelRunner(args)


def timed(r: ModelRunner, bs: int, steps: int) -> tuple[float, float]:
    """(prefill seconds, median decode step seconds) of `bs` random prompts, greedy."""
    ob.assign_slots(r, bs, PROMPT + steps + 1)
    ids = torch.randint(0, r.vocab_size, (bs, PROMPT), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    tokens = r.forward(ob.extend_batch(r, ids)).argmax(-1)
    prefill = time.perf_counter() - start
    step_times = []
    for position in range(PROMPT, PROMPT + steps):
        start = time.perf_counter()
        tokens = r.forward(ob.decode_batch(r, tokens, position)).argmax(-1)
        step_times.append(time.perf_counter() - start)
    return prefill, statistics.median(step_times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--steps", type=int, default=16)
    args = ap.parse_args()
    systems = (("float32", None), ("gguf", "gguf"), ("gguf-float-head", "gguf"))
    runners = {name: runner(q, args.threads, max(args.batch_sizes)) for name, q in systems}
    runners["gguf-float-head"].model.init_cache(torch.device("cpu"))  # logits from the float weight again
    for name, r in runners.items():
        print(f"{name}: {ob.weight_bytes(r.model) / 1e6:.0f} MB of weights", flush=True)
    for bs in args.batch_sizes:
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
        for _ in range(3):
            for name, r in runners.items():
                runs[name].append(timed(r, bs, args.steps))
        cells = []
        for name, got in runs.items():
            step = statistics.median(s for _, s in got)
            prefill = statistics.median(p for p, _ in got)
            cells.append(f"{name} prefill {1e3 * prefill:.0f} ms, decode {1e3 * step:.1f} ms/step ({bs / step:.1f}/s)")
        print(f"bs={bs} threads={args.threads} load {os.getloadavg()[0]:.1f}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
