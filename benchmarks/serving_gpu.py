"""Online serving on one GPU: `bench_serving` against `launch_server`, dummy weights, bf16.

Starts `python -m radixlm.launch_server` on a model directory holding a shape's config (see
`gpu_bench.SHAPES`) and a word-level tokenizer with one word per vocabulary id (`t0`, `t1`,
..., so any id the dummy model samples detokenizes, and the random prompts' text tokenizes back
to exactly their ids), waits for `/health`, then for each request rate runs
`radixlm.bench.serving` (random prompts, 1,024 in / 256 out by default, lengths drawn from
[len * 0.5, len]; KV cache flushed and a fresh seed per rate) and prints throughput and
TTFT / ITL / E2E p50, p90 and p99. Last, the offline ceiling of the same workload: the largest
rate's requests in ONE batched `/generate` call (cache flushed), output tok/s over its wall time.

Requests per rate: `rate * --duration` seconds of Poisson arrivals, clamped to
[--min-prompts, --max-prompts] (defaults 12 s, 32, 200: rates 4, 16, 64 and inf send 48, 192,
200 and 200 requests), which keeps one shape within ~2.5 min on an H100 including start-up.

    PYTHONPATH=. python benchmarks/serving_gpu.py --shape llama-3.2-1b --json serving_1b.json
    PYTHONPATH=. python benchmarks/serving_gpu.py --shape llama-3-8b --json serving_8b.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import httpx
import numpy as np
from gpu_bench import SHAPES, model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATES = (4.0, 16.0, 64.0, float("inf"))
START_TIMEOUT_S = 600.0
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=2048,
)


def save_word_tokenizer(path: str, vocab_size: int) -> None:
    """A tokenizer in `path` with one whitespace-separated word per id (`t<id>`), but bos `<s>`
    (id 1) and eos `</s>` (id 2), the Llama config's ids: special tokens are matched anywhere in a
    text, so they must not prefix other words. Encoding the decoded text of any ids gives them back."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab_size)}
    words.update({"<s>": 1, "</s>": 2})
    del words["t1"], words["t2"]
    tok = Tokenizer(models.WordLevel(words, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(path)


def prompts_per_rate(rate: float, duration: float, low: int, high: int) -> int:
    """`rate * duration` requests (an infinite rate: `high`), clamped to [low, high]."""
    if rate == float("inf"):
        return high
    return max(low, min(high, round(rate * duration)))


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 of `values` (seconds) in ms; NaN when empty."""
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    ms = np.asarray(values) * 1e3
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)}


def start_server(path: str, port: int, log_path: str, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--model-path", path, "--load-format", "dummy"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    log = open(log_path, "w")
    # Its own process group, so that stopping it reaches the scheduler process it starts too.
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_healthy(url: str, proc: subprocess.Popen, log_path: str, timeout: float = START_TIMEOUT_S) -> float:
    """Seconds until GET /health answers 200; raises with the server's log tail if it exits first."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{open(log_path).read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5.0).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"server not healthy after {timeout:.0f} s:\n{open(log_path).read()[-3000:]}")


def bench_argv(url: str, a: argparse.Namespace, rate: float, num: int, seed: int) -> list[str]:
    return [
        "--backend",
        "radixlm",
        "--base-url",
        url,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(a.input_len),
        "--random-output-len",
        str(a.output_len),
        "--random-range-ratio",
        str(a.range_ratio),
        "--num-prompts",
        str(num),
        "--request-rate",
        str(rate),
        "--seed",
        str(seed),
        "--flush-cache",
        "--output-details",
        "--disable-tqdm",
    ]


def run_rate(url: str, a: argparse.Namespace, rate: float, seed: int) -> dict:
    """One bench_serving run; its throughputs and latency percentiles."""
    from radixlm.bench import serving

    num = prompts_per_rate(rate, a.duration, a.min_prompts, a.max_prompts)
    rec = serving.main(bench_argv(url, a, rate, num, seed))
    return {
        "rate": rate,
        "num_prompts": num,
        "completed": rec["completed"],
        "failed": rec["failed"],
        "duration_s": rec["duration"],
        "request_throughput": rec["request_throughput"],
        "output_throughput": rec["output_throughput"],
        "total_throughput": rec["total_throughput"],
        "ttft_ms": percentiles(rec["ttfts"]),
        "itl_ms": percentiles([g for gaps in rec["itls"] for g in gaps]),
        "e2e_ms": percentiles(rec["e2e_latencies"]),
    }


def offline_ceiling(url: str, a: argparse.Namespace, num: int, seed: int) -> dict:
    """The same workload's `num` requests (seed `seed`) in one batched /generate call, cache
    flushed first: output tok/s over the call's wall time."""
    from radixlm.bench import serving
    from radixlm.bench.datasets import sample_requests
    from radixlm.tokenizer.loader import load_tokenizer

    args = serving.parse_args(bench_argv(url, a, float("inf"), num, seed))
    requests = sample_requests(args, load_tokenizer(a.model_path))
    body = {
        "input_ids": [r.prompt_ids for r in requests],
        "sampling_params": [{"max_new_tokens": r.output_len, "ignore_eos": True} for r in requests],
    }
    httpx.post(f"{url}/flush_cache", timeout=60.0)
    t0 = time.perf_counter()
    resp = httpx.post(f"{url}/generate", json=body, timeout=3600.0)
    wall = time.perf_counter() - t0
    resp.raise_for_status()
    outs = resp.json()
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    expected = sum(r.output_len for r in requests)
    if tokens != expected:
        raise RuntimeError(f"offline call produced {tokens} tokens, expected {expected}")
    return {"num_prompts": num, "seconds": wall, "output_throughput": tokens / wall}


def print_summary(label: str, a: argparse.Namespace, rows: list[dict], offline: Optional[dict]) -> None:
    print(
        f"\n{label}: random {a.input_len} in / {a.output_len} out, range ratio {a.range_ratio}, per request rate "
        "(req/s); latencies in ms (p50 / p90 / p99)"
    )
    print("| rate | requests | req/s | out tok/s | total tok/s | TTFT | ITL | E2E |")
    print("|---|---|---|---|---|---|---|---|")
    trio = lambda p: f"{p['p50']:.1f} / {p['p90']:.1f} / {p['p99']:.1f}"  # noqa: E731
    for r in rows:
        print(
            f"| {r['rate']:g} | {r['completed']}/{r['num_prompts']} | {r['request_throughput']:.2f} | "
            f"{r['output_throughput']:.0f} | {r['total_throughput']:.0f} | {trio(r['ttft_ms'])} | "
            f"{trio(r['itl_ms'])} | {trio(r['e2e_ms'])} |",
            flush=True,
        )
    if offline:
        print(
            f"offline ceiling (same workload, {offline['num_prompts']} requests in one /generate call): "
            f"{offline['output_throughput']:.0f} output tok/s",
            flush=True,
        )


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    ap.add_argument("--tiny", action="store_true", help="a tiny shape (CPU smoke run)")
    ap.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--range-ratio", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=12.0, help="seconds of arrivals per finite rate")
    ap.add_argument("--min-prompts", type=int, default=32)
    ap.add_argument("--max-prompts", type=int, default=200)
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--port", type=int, default=30123)
    ap.add_argument("--server-args", default="", help="extra launch_server flags, one string")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    shape = SHAPES[a.shape]
    a.model_path = model_dir(a.shape, **(TINY if a.tiny else {}))
    save_word_tokenizer(a.model_path, (TINY if a.tiny else shape)["vocab_size"])
    cpu = ["--dtype", "float32", "--num-threads", "1", "--max-total-tokens", "8192"]
    extra = cpu if a.tiny else ["--dtype", "bfloat16"]
    url, log_path = f"http://127.0.0.1:{a.port}", os.path.join(a.model_path, "server.log")
    # A SIGTERM (e.g. from `timeout`) unwinds through the `finally` below, which stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    proc = start_server(a.model_path, a.port, log_path, extra + a.server_args.split())
    label = "tiny" if a.tiny else a.shape
    try:
        start_s = wait_healthy(url, proc, log_path)
        print(f"{label}: server healthy after {start_s:.0f} s", flush=True)
        rows = [run_rate(url, a, rate, seed=1 + i) for i, rate in enumerate(a.rates)]
        offline = None if a.skip_offline else offline_ceiling(url, a, a.max_prompts, seed=1 + len(a.rates))
    except BaseException:
        print(f"server log tail ({log_path}):\n{open(log_path).read()[-3000:]}", flush=True)
        raise
    finally:
        stop_server(proc)
    print_summary(label, a, rows, offline)
    result = {"shape": label, "server_start_s": start_s, "rates": rows, "offline_ceiling": offline}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return result


if __name__ == "__main__":
    main()
