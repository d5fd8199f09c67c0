"""Transformers backend vs radixlm's native model, same checkpoint, same engine, one run.

    python benchmarks/transformers_backend.py            # bundled SmolLM2-135M GGUF, ~3 minutes on 2 cores
    python benchmarks/transformers_backend.py --quick    # smoke test
    python benchmarks/transformers_backend.py --model /path/to/hf_dir --json out.json

Both engines load the very same tensors (the GGUF dequantized to float32 on CPU) and run greedy,
`ignore_eos`, on random token ids with a fixed seed; each workload uses fresh prompts, so nothing
comes from the radix cache. Output tok/s = output tokens / wall time of the whole batch (prefill
included), best of `--repeats`, after a warm-up; the two engines
run alternately so load from other processes hits both alike. Achieved GFLOP/s uses
    FLOPs = 2 * P * (prompt tokens + fed-back output tokens) + 2 * H * V * (sampled tokens)
(P = non-embedding linear weights, H hidden, V vocab; attention itself left out) and is printed
beside the best GFLOP/s of a large float32 GEMM measured in this process (the compute ceiling).
Target: the Transformers backend within 1.5x of native.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

WORKLOADS = {"full": [(1, 64, 64), (32, 64, 64)], "quick": [(1, 16, 16), (8, 16, 16)]}
IMPLS = ("radixlm", "transformers")
TARGET_RATIO = 1.5
MIN_TOKEN_ID = 100


@dataclass(frozen=True)
class Result:
    """Best repeat of one workload on one engine: wall seconds, scheduler-process CPU seconds."""

    impl: str
    batch: int
    input_len: int
    output_len: int
    seconds: float
    cpu_seconds: float
    tok_per_s: float
    tok_per_cpu_s: float
    gflop_per_s: float


def linear_params(config: Any) -> tuple[int, int, int]:
    """(non-embedding linear weights, hidden, vocab) of a Llama-shaped config."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    return layers * (h * (q + 2 * kv) + q * h + 3 * h * inter), h, config.vocab_size


def gemm_ceiling(size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a size^3 float32 matmul on this machine."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc), all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(engine: Any, prompts: list[list[int]], output_len: int) -> tuple[float, float]:
    """(wall seconds, scheduler CPU seconds) of one batch."""
    pid = engine.client.process.pid
    cpu = _cpu_seconds(pid)
    wall = _timed(lambda: engine.generate(input_ids=prompts, sampling_params=_params(output_len)))
    return wall, _cpu_seconds(pid) - cpu


def run_both(
    model: str, workloads: list[tuple[int, int, int]], repeats: int, threads: int | None, rng: random.Random
) -> list[Result]:
    """Start one engine per implementation (an idle engine uses no CPU), warm both up, then time
    each workload on each engine in turn, so load from other processes hits both alike."""
    import radixlm

    engines = {
        impl: radixlm.Engine(model, model_impl=impl, max_total_tokens=8192, num_threads=threads, log_level="warning")
        for impl in IMPLS
    }
    try:
        params, hidden, vocab = linear_params(engines["radixlm"].model_config)
        best: dict[tuple[str, int], tuple[float, float]] = {}
        for engine in engines.values():
            engine.generate(input_ids=_prompts(2, 16, vocab, rng), sampling_params=_params(8))
        for index, (batch, input_len, output_len) in enumerate(workloads):
            for _ in range(repeats):
                for impl, engine in engines.items():
                    prompts = _prompts(batch, input_len, vocab, rng)
                    timing = _measure(engine, prompts, output_len)
                    best[impl, index] = min(timing, best.get((impl, index), (float("inf"), 0.0)))
        for engine in engines.values():
            engine.check_no_leak()
    finally:
        for engine in engines.values():
            engine.shutdown()
    return [_result(impl, workloads[index], timing, params, hidden, vocab) for (impl, index), timing in best.items()]


def _result(
    impl: str, workload: tuple[int, int, int], timing: tuple[float, float], params: int, hidden: int, vocab: int
) -> Result:
    batch, input_len, output_len = workload
    seconds, cpu = timing
    flops = 2 * params * batch * (input_len + output_len - 1) + 2 * hidden * vocab * batch * output_len
    tokens = batch * output_len
    return Result(
        impl,
        batch,
        input_len,
        output_len,
        seconds,
        cpu,
        tokens / seconds,
        tokens / max(cpu, 1e-9),
        flops / seconds / 1e9,
    )


def _prompts(count: int, length: int, vocab: int, rng: random.Random) -> list[list[int]]:
    return [[rng.randrange(MIN_TOKEN_ID, vocab) for _ in range(length)] for _ in range(count)]


def _params(output_len: int) -> dict:
    return {"temperature": 0, "max_new_tokens": output_len, "ignore_eos": True}


def report(results: list[Result], ceiling: float) -> list[dict]:
    """Print one row per workload: native and Transformers tok/s (wall and per CPU-second of the
    scheduler process, which other processes' load barely moves), GFLOP/s, and the ratios."""
    print(f"GEMM ceiling (float32, this process): {ceiling:.0f} GFLOP/s")
    print(
        f"{'batch':>5} {'in/out':>7} | {'native tok/s':>12} {'tok/cpu-s':>9} {'GFLOP/s':>8} | "
        f"{'transformers tok/s':>18} {'tok/cpu-s':>9} {'GFLOP/s':>8} | {'ratio wall':>10} {'ratio cpu':>9}"
    )
    rows = []
    for n in (r for r in results if r.impl == "radixlm"):
        t = next(r for r in results if r.impl == "transformers" and (r.batch, r.input_len) == (n.batch, n.input_len))
        ratio, cpu_ratio = n.tok_per_s / t.tok_per_s, n.tok_per_cpu_s / t.tok_per_cpu_s
        verdict = "ok" if ratio <= TARGET_RATIO else f"over the {TARGET_RATIO}x target"
        print(
            f"{n.batch:>5} {n.input_len:>3}/{n.output_len:<3} | {n.tok_per_s:>12.1f} {n.tok_per_cpu_s:>9.1f} "
            f"{n.gflop_per_s:>8.1f} | {t.tok_per_s:>18.1f} {t.tok_per_cpu_s:>9.1f} {t.gflop_per_s:>8.1f} | "
            f"{ratio:>9.2f}x {cpu_ratio:>8.2f}x {verdict}"
        )
        rows.append({"native": asdict(n), "transformers": asdict(t), "ratio_wall": ratio, "ratio_cpu": cpu_ratio})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="HF directory or GGUF (default: the bundled SmolLM2-135M)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per engine (default: all cores)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from radixlm.config.bundled import bundled_model_path

    model = args.model or bundled_model_path()
    workloads = WORKLOADS["quick" if args.quick else "full"]
    results = run_both(model, workloads, args.repeats, args.threads, random.Random(0))
    rows = report(results, gemm_ceiling(1024 if args.quick else 2048))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
