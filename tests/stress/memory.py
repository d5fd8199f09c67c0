"""Memory pressure: a KV pool far smaller than the demand (long prompts, long outputs, n=4).
Requests are retracted and resumed and all finish with their solo greedy output; requests that
could never fit the pool get a clear 400; the server stays up.

    cd tests && python -m stress.memory --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from typing import Optional

import httpx

from stress.common import format_summary, server_info, summarize, wait_idle_and_check_leak
from stress.load import WORDS, Spec, run_all, solo_outputs

POOL_TOKENS = 400  # smaller than the tiny model's 512-token context
SERVER_FLAGS = ("--max-total-tokens", str(POOL_TOKENS), "--chunked-prefill-size", "64")


def make_templates(count: int, seed: int = 0) -> list[Spec]:
    """Prompts of 60-150 tokens, 60-200 output tokens (EOS ignored), every other one n=4."""
    rng = random.Random(seed)
    apis = ("generate", "completions", "chat")
    return [
        Spec(
            api=apis[i % 3],
            prompt=f"{i}: " + " ".join(rng.choices(WORDS, k=rng.randint(40, 100))),
            max_tokens=rng.randint(60, 200),
            n=4 if i % 2 else 1,
            ignore_eos=True,
        )
        for i in range(count)
    ]


def never_fits(url: str) -> list[httpx.Response]:
    """Requests no pool of POOL_TOKENS can ever hold: each must be a 400 naming the limit."""
    prompt = " ".join(["hello world"] * 90)  # ~180 tokens
    with httpx.Client(base_url=url, timeout=60.0) as client:
        return [
            client.post("/generate", json={"text": prompt, "sampling_params": {"max_new_tokens": 300}}),
            client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 300}),
            client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 300}
            ),
            client.post("/generate", json={"text": prompt * 3, "sampling_params": {"max_new_tokens": 1}}),
        ]


def run_pressure(url: str, requests: int, concurrency: int, templates: int = 8) -> tuple[dict, list[str]]:
    shapes = make_templates(templates)
    reference = solo_outputs(url, shapes)
    before = server_info(url)["num_retracted_reqs"]
    specs = [shapes[i % len(shapes)] for i in range(requests)]
    start = time.perf_counter()
    outcomes = asyncio.run(run_all(url, specs, concurrency))
    summary = summarize(outcomes, time.perf_counter() - start)
    problems = [
        f"request {i}: HTTP {o.status} {o.error}" if o.status != 200 else f"request {i}: differs from solo"
        for i, o in enumerate(outcomes)
        if o.status != 200 or o.texts != reference[i % len(shapes)]
    ]
    summary["retracted"] = server_info(url)["num_retracted_reqs"] - before
    wait_idle_and_check_leak(url)
    summary["leaks"] = 0
    return summary, problems


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    ns = parser.parse_args(argv)
    from stress.server import started_server

    with started_server(None, None, *SERVER_FLAGS) as url:
        summary, problems = run_pressure(url, ns.requests, ns.concurrency)
        refused = never_fits(url)
        alive = httpx.get(f"{url}/health").status_code
    print(format_summary(f"memory pressure: {ns.requests} requests on a {POOL_TOKENS}-token KV pool", summary))
    print(f"retractions: {summary['retracted']}; KV leaks: {summary['leaks']}; mismatches/errors: {len(problems)}")
    print(f"never-fitting requests: {[r.status_code for r in refused]}; /health afterwards: {alive}")
    for p in problems[:10]:
        print("PROBLEM", p)
    return 1 if problems or any(r.status_code != 400 for r in refused) else 0


if __name__ == "__main__":
    sys.exit(main())
