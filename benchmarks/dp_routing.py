"""Data-parallel routing on CPU: cache-aware vs round robin, dp 2, generated-shared-prefix workload.

Run from the repository root (the engine spawns its scheduler processes, hence the main guard):

    python benchmarks/dp_routing.py             # the full run (a few minutes on 2 cores)
    python benchmarks/dp_routing.py --quick     # smoke test, < 1 minute

Workload: G groups of requests; the requests of a group share a long random "system prompt" and
differ in a short random question (`radixlm.bench.datasets.shared_prefix_requests`, shuffled).
Requests are sent by `--concurrency` client threads, greedy, `ignore_eos`, to one in-process Engine
with `dp_size=2` per routing method. Both engines are started first and the methods alternate
round by round (cache flushed before each run), so load drift on the machine hits both alike.

The machine is shared, so wall-clock throughput moves with the load; the replicas' CPU seconds
(utime + stime of every replica process over the run, from /proc) measure the work done and move
much less: `tok/cpu-s` = (prompt + output tokens) / those CPU seconds.

Cache hit rate = sum of `cached_tokens` / sum of prompt tokens. Its ceiling for this workload is
the rate when every system prompt is computed exactly once over all replicas:
    ceiling = (N - G) * S / (N * (S + Q))      N requests, G groups, S system and Q question tokens.
Round robin sends every group to every replica, so each system prompt is computed at least
`dp` times: its rate is at most (N - dp * G) * S / (N * (S + Q)).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

FULL = dict(groups=8, per_group=8, system_len=512, question_len=32, output_len=16, concurrency=16, rounds=2)
QUICK = dict(groups=4, per_group=4, system_len=128, question_len=16, output_len=4, concurrency=8, rounds=1)
METHODS = ("cache_aware", "round_robin")


@dataclass
class RunResult:
    """One pass of the workload through one engine."""

    method: str
    seconds: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    cpu_seconds: float
    routed: list[int]
    outputs: list[list[int]]

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens

    def row(self) -> str:
        return (
            f"{self.method:<12} {self.hit_rate:>8.1%} {self.prompt_tokens - self.cached_tokens:>9d} "
            f"{self.seconds:>8.1f} {len(self.outputs) / self.seconds:>7.2f} "
            f"{self.output_tokens / self.seconds:>8.1f} "
            f"{(self.prompt_tokens + self.output_tokens) / self.seconds:>11.1f} {self.cpu_seconds:>7.1f} "
            f"{(self.prompt_tokens + self.output_tokens) / self.cpu_seconds:>11.1f}   {self.routed}"
        )


HEADER = (
    f"{'method':<12} {'hit rate':>8} {'computed':>9} {'wall s':>8} {'req/s':>7} {'out tok/s':>8} "
    f"{'total tok/s':>11} {'cpu s':>7} {'tok/cpu-s':>11}   requests per replica"
)


def run_workload(engine: Any, method: str, requests: list[Any], concurrency: int) -> RunResult:
    """Send every request through `concurrency` client threads; time the whole batch."""
    assert engine.flush_cache(), "cache flush refused: requests still running"
    before = list(engine.get_server_info()["router"]["routed"])

    def one(req: Any) -> dict:
        params = {"temperature": 0.0, "max_new_tokens": req.output_len, "ignore_eos": True}
        return engine.generate(input_ids=req.prompt_ids, sampling_params=params)

    cpu_start = replicas_cpu_seconds(engine)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, requests))
    seconds = time.perf_counter() - start
    cpu = replicas_cpu_seconds(engine) - cpu_start
    after = engine.get_server_info()["router"]["routed"]
    engine.check_no_leak()
    return RunResult(
        method,
        seconds,
        sum(r.prompt_len for r in requests),
        sum(r["meta_info"]["cached_tokens"] for r in results),
        sum(len(r["output_ids"]) for r in results),
        cpu,
        [a - b for a, b in zip(after, before)],
        [r["output_ids"] for r in results],
    )


def replicas_cpu_seconds(engine: Any) -> float:
    """utime + stime of every replica process so far (Linux /proc; 0.0 elsewhere)."""
    total = 0.0
    for proc in engine.client.processes:
        try:
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the command name may contain spaces
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def warm_up(engine: Any, vocab: int) -> None:
    """First-call costs (allocations, lazy imports) on every replica, outside the timing."""
    rng = random.Random(123)
    prompts = [[rng.randrange(100, vocab) for _ in range(16)] for _ in range(4)]
    engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 2, "ignore_eos": True})


def ceilings(cfg: dict, dp: int) -> tuple[float, float]:
    """(ideal hit rate, round robin's best) for the workload (see the module docstring)."""
    n, g, s, q = cfg["groups"] * cfg["per_group"], cfg["groups"], cfg["system_len"], cfg["question_len"]
    total = n * (s + q)
    return (n - g) * s / total, max(0, n - dp * g) * s / total


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average {os.getloadavg()}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small workload (smoke test)")
    parser.add_argument("--model-path", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--dp", type=int, default=2)
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default: {value}")
    parser.add_argument("--max-total-tokens", type=int, default=16384, help="KV pool tokens per replica")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    import radixlm
    from radixlm.bench.datasets import TokenSource, shared_prefix_requests

    args = parse_args()
    cfg = {
        k: getattr(args, k) if getattr(args, k) is not None else v for k, v in (QUICK if args.quick else FULL).items()
    }
    print(f"start: {uptime()}")
    start = time.perf_counter()
    engines = {
        m: radixlm.Engine(
            args.model_path,
            dp_size=args.dp,
            load_balance_method=m,
            max_total_tokens=args.max_total_tokens,
            log_level="warning",
        )
        for m in METHODS
    }
    print(
        f"2 engines x dp {args.dp} started in {time.perf_counter() - start:.1f} s "
        f"({engines[METHODS[0]].server_args.model_path})"
    )
    try:
        first = engines[METHODS[0]]
        source = TokenSource(first.tokenizer, None, random.Random(args.seed))
        requests = shared_prefix_requests(
            source, cfg["groups"], cfg["per_group"], cfg["system_len"], cfg["question_len"], cfg["output_len"]
        )
        for engine in engines.values():
            warm_up(engine, first.vocab_size)
        results = []
        for rnd in range(cfg["rounds"]):
            for method in METHODS if rnd % 2 == 0 else METHODS[::-1]:
                results.append(run_workload(engines[method], method, requests, cfg["concurrency"]))
                print(f"  round {rnd + 1}: {results[-1].row()}", flush=True)
    finally:
        for engine in engines.values():
            engine.shutdown()
    report(cfg, args.dp, results)


def report(cfg: dict, dp: int, results: list[RunResult]) -> None:
    ideal, rr_best = ceilings(cfg, dp)
    n = cfg["groups"] * cfg["per_group"]
    print(
        f"\nworkload: {cfg['groups']} groups x {cfg['per_group']} requests = {n}, system prompt "
        f"{cfg['system_len']} + question {cfg['question_len']} tokens, {cfg['output_len']} output tokens, "
        f"{cfg['concurrency']} client threads, dp {dp}, {cfg['rounds']} round(s)"
    )
    print(
        f"hit-rate ceiling (each system prompt computed once): {ideal:.1%}; "
        f"round robin at best (computed once per replica): {rr_best:.1%}"
    )
    print(HEADER)
    for method in METHODS:
        mine = [r for r in results if r.method == method]
        best = min(mine, key=lambda r: r.seconds)
        print(best.row() + f"   (best of {len(mine)})")
    by = {m: min((r for r in results if r.method == m), key=lambda r: r.seconds) for m in METHODS}
    speedup = by["round_robin"].seconds / by["cache_aware"].seconds
    cpu = {m: sum(r.cpu_seconds for r in results if r.method == m) for m in METHODS}
    same = all(r.outputs == results[0].outputs for r in results)
    print(
        f"cache_aware vs round_robin: hit rate {by['cache_aware'].hit_rate:.1%} vs "
        f"{by['round_robin'].hit_rate:.1%}; wall-clock throughput x{speedup:.2f} (best runs); round robin's "
        f"replicas burn x{cpu['round_robin'] / cpu['cache_aware']:.2f} the CPU seconds; "
        f"greedy outputs identical: {same}"
    )
    print(f"end: {uptime()}")


if __name__ == "__main__":
    main()
