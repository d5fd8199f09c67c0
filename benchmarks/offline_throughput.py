"""Offline throughput on CPU: radixlm vs HF transformers `generate`, and radix cache on vs off.

Run from the repository root (the engine spawns its scheduler process, hence the main guard):

    python benchmarks/offline_throughput.py                # the full run (several minutes on 2 cores)
    python benchmarks/offline_throughput.py --quick        # smoke test, < 1 minute
    python benchmarks/offline_throughput.py --json out.json

Both systems run the bundled SmolLM2-135M-Instruct GGUF dequantized to float32 (HF gets the very
same tensors), greedy, `ignore_eos`, on random token ids drawn from [100, vocab) with a fixed seed.
Throughput is output tokens / wall time of the whole batch (prefill included); start-up and the
first call's costs are excluded by a small warm-up on each side.

Achieved GFLOP/s uses the model-FLOPs formula printed with the results:
    FLOPs = 2 * P * (prompt tokens computed + fed-back output tokens) + 2 * H * V * (sampled tokens)
P = non-embedding linear weights (q,k,v,o, gate, up, down of every layer), H = hidden size,
V = vocab size (the tied lm_head). Prompt tokens served from the radix cache are not computed;
the last sampled token of a request is never fed back. Attention scores/values (4*H*context per
token and layer: +6% at a context of 192, +18% at 560), norms, rope and activations are left out.
It is read against the measured ceiling: the best GFLOP/s of a large float32 GEMM in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(__file__))
from hf_peer import bench_hf_sweep  # noqa: E402
from throughput_measure import (  # noqa: E402
    ModelShape,
    RunResult,
    gemm_ceiling,
    load_average,
    model_shape,
    proc_cpu_seconds,
)

FULL = dict(
    num_prompts=64,
    input_len=128,
    output_len=64,
    shared_prefix_len=512,
    suffix_len=32,
    cache_output_len=32,
    hf_batch_sizes=[8, 16, 32, 64],
    gemm_size=2048,
)
QUICK = dict(
    num_prompts=8,
    input_len=32,
    output_len=16,
    shared_prefix_len=64,
    suffix_len=8,
    cache_output_len=8,
    hf_batch_sizes=[4, 8],
    gemm_size=1024,
)
MIN_TOKEN_ID = 100  # keep clear of special and control tokens
TARGET_VS_HF, TARGET_CACHE = 3.0, 2.0
FLOPS_FORMULA = "(2*P*(computed prompt + fed-back output tokens) + 2*H*V*sampled tokens)"


@dataclass(frozen=True)
class BenchConfig:
    """Workload sizes and engine knobs for one run."""

    num_prompts: int
    input_len: int
    output_len: int
    shared_prefix_len: int
    suffix_len: int
    cache_output_len: int
    hf_batch_sizes: list[int]
    gemm_size: int
    seed: int = 0
    threads: int = 2
    max_prefill_tokens: Optional[int] = None
    skip_hf: bool = False


# -- workload ------------------------------------------------------------------------------------
def random_prompts(count: int, length: int, vocab: int, rng: random.Random) -> list[list[int]]:
    """`count` prompts of exactly `length` ids in [MIN_TOKEN_ID, vocab)."""
    return [[rng.randrange(MIN_TOKEN_ID, vocab) for _ in range(length)] for _ in range(count)]


def shared_prefix_prompts(
    count: int, prefix_len: int, suffix_len: int, vocab: int, rng: random.Random
) -> list[list[int]]:
    """One random prefix shared by all prompts, then a random unique suffix each."""
    prefix = random_prompts(1, prefix_len, vocab, rng)[0]
    return [prefix + suffix for suffix in random_prompts(count, suffix_len, vocab, rng)]


# -- radixlm -----------------------------------------------------------------------------------
def warmup_prompts(prompts: list[list[int]], vocab: int) -> list[list[int]]:
    """Two short prompts whose first id starts no benchmark prompt, so they never seed the cache."""
    firsts = {p[0] for p in prompts}
    first = next(t for t in range(MIN_TOKEN_ID, vocab) if t not in firsts)
    return [[first] + list(range(MIN_TOKEN_ID, MIN_TOKEN_ID + 15)), [first] + list(range(200, 215))]


def engine_kwargs(cfg: BenchConfig, pool_tokens: int, **extra: Any) -> dict:
    """Engine arguments shared by every radixlm run (pool sized so nothing is ever retracted)."""
    kwargs = dict(
        log_level="warning",
        num_threads=cfg.threads,
        max_running_requests=cfg.num_prompts,
        max_total_tokens=pool_tokens + 256,
        **extra,
    )
    if cfg.max_prefill_tokens:
        kwargs["max_prefill_tokens"] = cfg.max_prefill_tokens
    return kwargs


def timed_generate(
    engine: Any, name: str, batches: list[list[list[int]]], output_len: int, shape: ModelShape
) -> tuple[RunResult, list[list[int]]]:
    """Time `generate` over each batch of prompts in turn (one call per batch) on a warm engine."""
    params = {"temperature": 0, "max_new_tokens": output_len, "ignore_eos": True}
    pid = engine.client.process.pid
    cpu0, own0, start = proc_cpu_seconds(pid), time.process_time(), time.perf_counter()
    outs = [out for batch in batches for out in engine.generate(input_ids=batch, sampling_params=params)]
    seconds = time.perf_counter() - start
    cpu1, own = proc_cpu_seconds(pid), time.process_time() - own0
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0 + own
    n = len(outs)
    prompt_tokens = sum(o["meta_info"]["prompt_tokens"] for o in outs)
    cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
    completion = sum(o["meta_info"]["completion_tokens"] for o in outs)
    if completion != n * output_len:
        raise RuntimeError(f"{name}: expected {n * output_len} output tokens, got {completion}")
    flops = shape.flops(prompt_tokens - cached, n * (output_len - 1), completion)
    return (
        RunResult(name, seconds, cpu, completion, prompt_tokens, cached, flops / 1e9, {"calls": len(batches)}),
        [o["output_ids"] for o in outs],
    )


def bench_radixlm(
    kwargs: dict, plans: list[tuple[str, list[list[list[int]]]]], output_len: int, shape: ModelShape
) -> list[tuple[RunResult, list[list[int]]]]:
    """One engine: warm up, then time each plan (name, batches), flushing the radix cache in between."""
    import radixlm

    everything = [p for _, batches in plans for batch in batches for p in batch]
    warmup = {"temperature": 0, "max_new_tokens": 4, "ignore_eos": True}
    results = []
    with radixlm.Engine(**kwargs) as engine:
        engine.generate(input_ids=warmup_prompts(everything, shape.vocab), sampling_params=warmup)
        for name, batches in plans:
            if not engine.flush_cache():
                raise RuntimeError("could not flush the radix cache between runs")
            results.append(timed_generate(engine, name, batches, output_len, shape))
    return results


def mismatches(a: list[list[int]], b: list[list[int]]) -> int:
    """How many requests' greedy outputs differ."""
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


# -- the two comparisons -----------------------------------------------------------------------
def bench_vs_hf(cfg: BenchConfig, path: str, shape: ModelShape, log: Callable[[str], None]) -> dict:
    """Part 1: the same random prompts through radixlm (one call) and HF generate (best batch size)."""
    prompts = random_prompts(cfg.num_prompts, cfg.input_len, shape.vocab, random.Random(cfg.seed))
    log(f"[1] radixlm vs HF: {cfg.num_prompts} prompts x {cfg.input_len} in, {cfg.output_len} out")
    pool = cfg.num_prompts * (cfg.input_len + cfg.output_len)
    [(ours, our_outputs)] = bench_radixlm(engine_kwargs(cfg, pool), [("radixlm", [prompts])], cfg.output_len, shape)
    log(f"  radixlm: {ours.seconds:.2f} s, {ours.tok_per_s:.1f} out tok/s (load {load_average()})")
    result: dict[str, Any] = {"radixlm": ours, "hf_runs": [], "hf_best": None, "ratio": None, "hf_mismatches": None}
    if cfg.skip_hf:
        return result
    runs, hf_outputs = bench_hf_sweep(path, prompts, cfg.output_len, cfg.hf_batch_sizes, shape, log)
    best = min(runs, key=lambda r: r.seconds)
    result.update(
        hf_runs=runs,
        hf_best=best,
        ratio=ours.tok_per_s / best.tok_per_s,
        hf_mismatches=mismatches(our_outputs, hf_outputs),
    )
    return result


def bench_cache(cfg: BenchConfig, shape: ModelShape, log: Callable[[str], None]) -> dict:
    """Part 2: a shared prefix through two engines, radix cache on and off, run one after the other.

    The "primed" run sends the first prompt alone, then the rest: the scheduler does not yet
    deduplicate a prefix shared inside one prefill batch, so this shows what doing so would give."""
    rng = random.Random(cfg.seed + 1)
    prompts = shared_prefix_prompts(cfg.num_prompts, cfg.shared_prefix_len, cfg.suffix_len, shape.vocab, rng)
    log(
        f"[2] radix cache: {cfg.num_prompts} prompts = {cfg.shared_prefix_len} shared + {cfg.suffix_len} unique, "
        f"{cfg.cache_output_len} out"
    )
    pool = cfg.num_prompts * (cfg.shared_prefix_len + cfg.suffix_len + cfg.cache_output_len)
    configs = [
        (False, [("radix cache on", [prompts]), ("cache on, primed", [prompts[:1], prompts[1:]])]),
        (True, [("radix cache off", [prompts])]),
    ]
    runs, outputs = {}, {}
    for disable, plans in configs:
        kwargs = engine_kwargs(cfg, pool, disable_radix_cache=disable)
        for run, outs in bench_radixlm(kwargs, plans, cfg.cache_output_len, shape):
            log(
                f"  {run.name}: {run.seconds:.2f} s, {run.tok_per_s:.1f} out tok/s, cached {run.cached_tokens} "
                f"(load {load_average()})"
            )
            runs[run.name], outputs[run.name] = run, outs
    on, primed, off = runs["radix cache on"], runs["cache on, primed"], runs["radix cache off"]
    return {
        "on": on,
        "primed": primed,
        "off": off,
        "ratio": on.tok_per_s / off.tok_per_s,
        "primed_ratio": primed.tok_per_s / off.tok_per_s,
        "mismatches": mismatches(outputs["radix cache on"], outputs["radix cache off"]),
        "primed_mismatches": mismatches(outputs["cache on, primed"], outputs["radix cache off"]),
    }


# -- report ------------------------------------------------------------------------------------
def table_rows(vs_hf: dict, cache: dict) -> list[tuple[str, RunResult]]:
    rows = [("vs HF", vs_hf["radixlm"])] + [("vs HF", r) for r in vs_hf["hf_runs"]]
    return rows + [("cache", cache["on"]), ("cache", cache["primed"]), ("cache", cache["off"])]


def format_table(vs_hf: dict, cache: dict, ceiling: float, num_prompts: int) -> str:
    """The compact end-of-run table plus the ratios against their targets."""
    header = (
        f"{'part':<6} {'system':<20} {'time s':>8} {'out tok/s':>10} {'GFLOP/s':>8} {'% ceil':>7} "
        f"{'cached':>7} {'cpu s':>7}"
    )
    lines = [header, "-" * len(header)]
    for part, r in table_rows(vs_hf, cache):
        cpu = "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.1f}"
        lines.append(
            f"{part:<6} {r.name:<20} {r.seconds:>8.2f} {r.tok_per_s:>10.1f} {r.gflop_per_s:>8.1f} "
            f"{100 * r.gflop_per_s / ceiling:>6.0f}% {r.cached_tokens:>7} {cpu:>7}"
        )
    lines.append(f"GFLOP/s = {FLOPS_FORMULA}, over wall time; ceiling = best fp32 GEMM: {ceiling:.1f} GFLOP/s")
    if vs_hf["ratio"] is not None:
        best = vs_hf["hf_best"]
        lines.append(
            f"radixlm / best HF ({best.name}): {vs_hf['ratio']:.2f}x  (target >= {TARGET_VS_HF:.0f}x: "
            f"{'met' if vs_hf['ratio'] >= TARGET_VS_HF else 'NOT met'}); greedy outputs differing "
            f"from HF: {vs_hf['hf_mismatches']}/{num_prompts}"
        )
    lines.append(
        f"radix cache on / off: {cache['ratio']:.2f}x  (target >= {TARGET_CACHE:.0f}x: "
        f"{'met' if cache['ratio'] >= TARGET_CACHE else 'NOT met'}); greedy outputs differing "
        f"on vs off: {cache['mismatches']}/{num_prompts}"
    )
    lines.append(
        f"radix cache primed / off: {cache['primed_ratio']:.2f}x; greedy outputs differing primed vs off: "
        f"{cache['primed_mismatches']}/{num_prompts}"
    )
    lines.append(cpu_ratios(vs_hf, cache))
    return "\n".join(lines)


def cpu_ratios(vs_hf: dict, cache: dict) -> str:
    """The same ratios by CPU seconds of the computing process: less skewed by other load on the
    machine than wall time (fair with --threads 1; with more threads, spin-waits are counted too)."""

    def ratio(a: RunResult, b: Optional[RunResult]) -> str:
        if b is None or not a.cpu_seconds or not b.cpu_seconds:
            return "-"
        return f"{(a.output_tokens / a.cpu_seconds) / (b.output_tokens / b.cpu_seconds):.2f}x"

    best_hf = min(vs_hf["hf_runs"], key=lambda r: r.cpu_seconds or float("inf"), default=None)
    return (
        f"by CPU seconds: radixlm / best HF {ratio(vs_hf['radixlm'], best_hf)}, cache on / off "
        f"{ratio(cache['on'], cache['off'])}, primed / off {ratio(cache['primed'], cache['off'])}"
    )


def to_json(value: Any) -> Any:
    """RunResults become dicts with their derived rates; everything else passes through."""
    if isinstance(value, RunResult):
        return {**asdict(value), "tok_per_s": value.tok_per_s, "gflop_per_s": value.gflop_per_s}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def parse_args(argv: Optional[list[str]] = None) -> tuple[BenchConfig, Optional[str]]:
    """Command line -> BenchConfig; --quick swaps in the small sizes unless a size is given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, value in FULL.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, list):
            parser.add_argument(flag, type=int, nargs="+", default=None)
        else:
            parser.add_argument(flag, type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of under a minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads, for HF here and the radixlm scheduler alike",
    )
    parser.add_argument("--max-prefill-tokens", type=int, default=None, help="radixlm engine knob (default: its own)")
    parser.add_argument("--skip-hf", action="store_true", help="leave out the HF baseline")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    ns = parser.parse_args(argv)
    sizes = {k: getattr(ns, k) if getattr(ns, k) is not None else (QUICK if ns.quick else FULL)[k] for k in FULL}
    config = BenchConfig(
        **sizes, seed=ns.seed, threads=ns.threads, max_prefill_tokens=ns.max_prefill_tokens, skip_hf=ns.skip_hf
    )
    return config, ns.json


def machine_info(cfg: BenchConfig) -> dict:
    """What the figures depend on: CPU model, cores, threads, library versions."""
    import transformers

    model = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "threads": cfg.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }


def main(argv: Optional[list[str]] = None) -> dict:
    """Run both parts, print progress, the table, and optionally write JSON."""
    from radixlm.config.bundled import bundled_model_path
    from radixlm.model_loader.gguf_reader import GGUFCheckpoint

    cfg, json_path = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the scheduler's weight-loading bar would clutter the log
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)  # noqa: E731
    path = bundled_model_path()
    shape = model_shape(GGUFCheckpoint(path).config())
    info = {**machine_info(cfg), "load_start": load_average(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    log(f"machine: {info}")
    log(
        f"model: bundled SmolLM2-135M fp32, non-embedding params {shape.non_embedding_params / 1e6:.1f} M, "
        f"hidden {shape.hidden}, vocab {shape.vocab}"
    )
    ceiling = gemm_ceiling(cfg.gemm_size)
    log(f"GEMM ceiling: {ceiling:.1f} GFLOP/s ({cfg.gemm_size}^3 fp32, best of 5)")
    vs_hf = bench_vs_hf(cfg, path, shape, log)
    cache = bench_cache(cfg, shape, log)
    ceiling_end = gemm_ceiling(cfg.gemm_size)
    info["load_end"] = load_average()
    log(f"GEMM ceiling again at the end: {ceiling_end:.1f} GFLOP/s; load average {info['load_end']}")
    ceiling = max(ceiling, ceiling_end)
    print("\n" + format_table(vs_hf, cache, ceiling, cfg.num_prompts), flush=True)
    results = {
        "config": asdict(cfg),
        "machine": info,
        "gemm_ceiling_gflops": ceiling,
        "vs_hf": vs_hf,
        "radix_cache": cache,
        "flops_formula": FLOPS_FORMULA,
    }
    if json_path:
        with open(json_path, "w") as f:
            json.dump(to_json(results), f, indent=2)
        log(f"wrote {json_path}")
    return results


if __name__ == "__main__":
    main()
