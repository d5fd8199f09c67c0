"""`python -m radixlm.bench_serving`: online serving benchmark against a running server.

Works against radixlm, SGLang (`--backend sglang`, native `/generate`), vLLM and any
OpenAI-compatible endpoint (`--backend openai` / `openai-chat`). Requests arrive as a Poisson
process at `--request-rate` per second (`inf`: all at once), at most `--max-concurrency` in flight;
every request streams, and the client measures TTFT, TPOT, ITL and E2E latency. Prints SGLang's
result layout, appends a JSON line to `--output-file`, and writes PNG plots to `--plot DIR`.

    python -m radixlm.launch_server --port 30000 &
    python -m radixlm.bench_serving --backend radixlm --port 30000 --num-prompts 32 --request-rate 2 --plot out/
    python -m radixlm.bench_serving --backend vllm --base-url http://127.0.0.1:8000 --tokenizer meta-llama/...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from typing import Any, Callable, Optional

import httpx

from radixlm.bench.backends import BACKENDS, RequestConfig, send_request
from radixlm.bench.datasets import BenchRequest, add_dataset_args, dataset_summary, sample_requests
from radixlm.bench.metrics import RequestResult, ServingMetrics, append_jsonl, compute_metrics, format_serving

DEFAULT_PORTS = {"vllm": 8000}
WARMUP_OUTPUT_LEN = 8
HTTP_TIMEOUT_S = 6 * 3600.0


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="radixlm")
    parser.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:30000 (overrides --host/--port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default 30000 (8000 for vllm)")
    parser.add_argument("--model", default=None, help="model name in OpenAI bodies (default: GET /v1/models)")
    parser.add_argument("--tokenizer", default=None, help="path or HF name (default: asked from the server)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    add_dataset_args(parser)
    parser.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s, Poisson; inf = burst")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--warmup-requests", type=int, default=1)
    parser.add_argument("--flush-cache", action="store_true", help="POST /flush_cache after the warm-up")
    parser.add_argument("--disable-ignore-eos", action="store_true")
    parser.add_argument("--tokenize-prompt", action="store_true", help="send token ids instead of text")
    parser.add_argument("--extra-request-body", default=None, help="JSON merged into every request body")
    parser.add_argument("--output-file", default=None, help="append one JSON line with the results")
    parser.add_argument("--output-details", action="store_true", help="per-request latencies in the JSON line")
    parser.add_argument("--plot", default=None, metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument("--plot-prefix", default=None, help="file name prefix of the plots")
    parser.add_argument("--disable-tqdm", action="store_true")
    return parser.parse_args(argv)


def base_url_of(args: argparse.Namespace) -> str:
    if args.base_url:
        return args.base_url.rstrip("/")
    port = args.port or DEFAULT_PORTS.get(args.backend, 30000)
    host = args.host if "://" in args.host else f"http://{args.host}"
    return f"{host}:{port}"


def _get_json(url: str, api_key: Optional[str]) -> Optional[dict]:
    """GET a JSON document; None when the server has no such route or is unreachable."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url, headers=headers, timeout=30.0)
        return resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def resolve_model(args: argparse.Namespace, base_url: str) -> str:
    """--model, else the first id of GET /v1/models, else "default"."""
    if args.model:
        return args.model
    models = _get_json(f"{base_url}/v1/models", args.api_key) or {}
    data = models.get("data") or []
    return data[0]["id"] if data else "default"


def resolve_tokenizer(args: argparse.Namespace, base_url: str) -> Any:
    """--tokenizer, else the server's tokenizer / model path (GET /get_model_info, /v1/models), else --model."""
    from radixlm.tokenizer.loader import load_tokenizer

    candidates = [args.tokenizer]
    info = _get_json(f"{base_url}/get_model_info", args.api_key) or {}
    candidates += [info.get("tokenizer_path"), info.get("model_path")]
    models = (_get_json(f"{base_url}/v1/models", args.api_key) or {}).get("data") or []
    candidates += [m.get("root") for m in models[:1]] + [args.model]
    for name in filter(None, candidates):
        if os.path.exists(name):
            return load_tokenizer(name)
    names = [c for c in candidates if c]
    if not names:
        raise SystemExit("bench_serving: cannot find a tokenizer; pass --tokenizer PATH_OR_NAME")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(names[0])


def arrival_offsets(count: int, rate: float, seed: int) -> list[float]:
    """Send times (s after the start) of a Poisson process of `rate` per second; all 0 for inf."""
    if rate == float("inf"):
        return [0.0] * count
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(count):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def new_client() -> httpx.AsyncClient:
    """No connection cap: a queued connection would count as server latency."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(HTTP_TIMEOUT_S, connect=30.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
    )


async def warm_up(cfg: RequestConfig, requests: list[BenchRequest], count_tokens: Callable[[str], int]) -> None:
    """The first `len(requests)` requests, short; any failure stops the benchmark with its error."""
    async with new_client() as client:
        short = [BenchRequest(r.prompt, r.prompt_ids, min(r.output_len, WARMUP_OUTPUT_LEN)) for r in requests]
        results = await asyncio.gather(*(send_request(client, cfg, r, count_tokens) for r in short))
    failed = [r.error for r in results if not r.success]
    if failed:
        raise SystemExit(f"bench_serving: warm-up request failed: {failed[0]}")


def flush_cache(cfg: RequestConfig) -> None:
    """POST /flush_cache (radixlm and SGLang have it, whatever API is benchmarked); others: a note."""
    try:
        resp = httpx.post(f"{cfg.base_url}/flush_cache", headers=cfg.headers, timeout=60.0)
        print(f"flush cache: HTTP {resp.status_code} {resp.text.strip()[:200]}", flush=True)
    except httpx.HTTPError as exc:
        print(f"flush cache: not done ({type(exc).__name__}: {exc})", flush=True)


async def run_requests(
    cfg: RequestConfig,
    requests: list[BenchRequest],
    offsets: list[float],
    max_concurrency: Optional[int],
    count_tokens: Callable[[str], int],
    disable_tqdm: bool,
) -> tuple[list[RequestResult], float]:
    """Send every request at its offset (waiting for a concurrency slot); returns results and duration."""
    from tqdm import tqdm

    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = tqdm(total=len(requests), disable=disable_tqdm)

    async def one(client: httpx.AsyncClient, req: BenchRequest) -> RequestResult:
        if gate is None:
            result = await send_request(client, cfg, req, count_tokens)
        else:
            async with gate:
                result = await send_request(client, cfg, req, count_tokens)
        bar.update(1)
        return result

    async with new_client() as client:
        start, tasks = time.perf_counter(), []
        for req, offset in zip(requests, offsets):
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            tasks.append(asyncio.create_task(one(client, req)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    bar.close()
    for r in results:
        r.start -= start
    return list(results), duration


def make_record(
    args: argparse.Namespace,
    cfg: RequestConfig,
    metrics: ServingMetrics,
    results: list[RequestResult],
    loads: tuple[float, float],
) -> dict:
    record = {
        "backend": args.backend,
        "base_url": cfg.base_url,
        "model": cfg.model,
        "dataset_name": args.dataset_name,
        "num_prompts": len(results),
        "request_rate": args.request_rate,
        "max_concurrency": args.max_concurrency,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_avg_start": loads[0],
        "load_avg_end": loads[1],
        **metrics.flat(),
    }
    if args.output_details:
        ok = [r for r in results if r.success]
        record.update(
            input_lens=[r.prompt_len for r in ok],
            output_lens=[r.output_len for r in ok],
            ttfts=[r.ttft for r in ok],
            itls=[r.itl for r in ok],
            e2e_latencies=[r.latency for r in ok],
            cached_tokens=[r.cached_tokens for r in ok],
            errors=[r.error for r in results if not r.success],
        )
    return record


def main(argv: Optional[list[str]] = None) -> dict:
    """Resolve the server, build the requests, warm up, run, report; returns the JSON record."""
    args = parse_args(argv)
    base_url = base_url_of(args)
    cfg = RequestConfig(
        args.backend,
        base_url,
        resolve_model(args, base_url),
        not args.disable_ignore_eos,
        args.tokenize_prompt,
        json.loads(args.extra_request_body) if args.extra_request_body else None,
        args.api_key,
    )
    tokenizer = resolve_tokenizer(args, base_url)
    count_tokens = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    requests = sample_requests(args, tokenizer)
    print(
        f"{args.backend} at {base_url} (model {cfg.model!r}); {args.dataset_name}: {dataset_summary(requests)}",
        flush=True,
    )
    if args.warmup_requests > 0:
        asyncio.run(warm_up(cfg, requests[: args.warmup_requests], count_tokens))
    if args.flush_cache:
        flush_cache(cfg)
    load_start = os.getloadavg()[0]
    offsets = arrival_offsets(len(requests), args.request_rate, args.seed)
    results, duration = asyncio.run(
        run_requests(cfg, requests, offsets, args.max_concurrency, count_tokens, args.disable_tqdm)
    )
    metrics = compute_metrics(results, duration)
    print(format_serving(metrics, args.backend, args.request_rate, args.max_concurrency), flush=True)
    failures = [r.error for r in results if not r.success]
    if failures:
        print(f"{len(failures)} requests failed; first error: {failures[0]}", flush=True)
    record = make_record(args, cfg, metrics, results, (load_start, os.getloadavg()[0]))
    print(
        f"load average (1 min): {record['load_avg_start']:.2f} at start, {record['load_avg_end']:.2f} at end",
        flush=True,
    )
    if args.output_file:
        append_jsonl(args.output_file, record)
    if args.plot:
        from radixlm.bench.plots import write_plots

        prefix = args.plot_prefix or f"{args.backend}_{args.dataset_name}_rate{args.request_rate:g}"
        label = (
            f"{args.backend}, {args.dataset_name}, {len(requests)} requests, rate {args.request_rate:g}/s, "
            f"max concurrency {args.max_concurrency or 'not set'}"
        )
        for path in write_plots(results, duration, args.plot, prefix, label):
            print(f"wrote {path}", flush=True)
    return record


if __name__ == "__main__":
    main()
