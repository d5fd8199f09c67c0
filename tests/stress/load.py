"""Load: many concurrent requests mixing APIs, streaming / not, short / long, constrained / free,
n>1; every request must complete with the greedy output of the same request run alone, and the
KV pool must be fully free afterwards.

    cd tests && python -m stress.load --requests 1000 --concurrency 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Optional

import httpx

from stress.common import Outcome, format_summary, summarize, wait_idle_and_check_leak

WORDS = (
    "the quick brown fox jumps over the lazy dog hello world café naïve 世界 🙂 capital of France "
    "Paris Tokyo def main print return STOP end section"
).split()
APIS = ("generate", "completions", "chat")
REGEX = r"(yes|no), [a-z ]{1,12}\."
SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 6}},
    "required": ["a", "b"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Spec:
    """One request shape. Greedy, so its output is fixed; `stream` does not change it."""

    api: str
    prompt: str
    max_tokens: int
    n: int = 1
    constraint: Optional[tuple[str, Any]] = None  # ("regex", pattern) or ("json_schema", schema)
    stream: bool = False
    ignore_eos: bool = False

    def payload(self) -> tuple[str, dict]:
        extra = {} if self.constraint is None else {self.constraint[0]: self.constraint[1]}
        if self.ignore_eos:
            extra["ignore_eos"] = True
        if self.api == "generate":
            params = {"max_new_tokens": self.max_tokens, "temperature": 0, "n": self.n, **extra}
            return "/generate", {"text": self.prompt, "sampling_params": params, "stream": self.stream}
        common = {
            "model": "default",
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "n": self.n,
            "stream": self.stream,
            **extra,
        }
        if self.stream:
            common["stream_options"] = {"include_usage": True}
        if self.api == "completions":
            return "/v1/completions", {"prompt": self.prompt, **common}
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": self.prompt}], **common}


def make_templates(count: int, seed: int = 0, long_tokens: int = 96) -> list[Spec]:
    """`count` distinct request shapes cycling through APIs, lengths, constraints and n."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        long_prompt = i % 4 == 1
        words = rng.choices(WORDS, k=rng.randint(60, 90) if long_prompt else rng.randint(2, 8))
        api = APIS[i % 3]
        constraint = None
        if i % 5 == 2:
            constraint = ("regex", REGEX)
        elif i % 5 == 4:  # the native API takes the schema as a string; the OpenAI ones either way
            constraint = ("json_schema", json.dumps(SCHEMA) if api == "generate" else SCHEMA)
        out.append(
            Spec(
                api=api,
                prompt=f"{i}: " + " ".join(words),
                n=3 if i % 7 == 3 else 1,
                max_tokens=long_tokens if i % 3 == 2 else rng.randint(4, 16),
                constraint=constraint,
            )
        )
    return out


def make_load(templates: list[Spec], count: int, seed: int = 1) -> list[Spec]:
    """`count` requests drawn from the templates, half of them streamed."""
    rng = random.Random(seed)
    return [replace(templates[i % len(templates)], stream=rng.random() < 0.5) for i in range(count)]


async def send(client: httpx.AsyncClient, spec: Spec) -> Outcome:
    path, body = spec.payload()
    start = time.perf_counter()
    try:
        if spec.stream:
            outcome = await _send_stream(client, spec, path, body)
        else:
            response = await client.post(path, json=body)
            outcome = _parse_whole(spec, response)
    except httpx.HTTPError as exc:
        outcome = Outcome(status=0, error={"message": f"{type(exc).__name__}: {exc}"})
    outcome.latency_s = time.perf_counter() - start
    return outcome


def _error_of(status: int, content: bytes) -> Outcome:
    """A failed request; a body that is not an OpenAI-style error is kept as its text."""
    try:
        error = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        error = {"message": content[:200].decode(errors="replace"), "not_openai_style": True}
    return Outcome(status=status, error=error)


def _parse_whole(spec: Spec, response: httpx.Response) -> Outcome:
    if response.status_code != 200:
        return _error_of(response.status_code, response.content)
    body = response.json()
    if spec.api == "generate":
        items = body if isinstance(body, list) else [body]
        return Outcome(
            200, [it["text"] for it in items], tokens=sum(it["meta_info"]["completion_tokens"] for it in items)
        )
    key = "text" if spec.api == "completions" else "message"
    texts = [c[key] if key == "text" else c[key]["content"] for c in sorted(body["choices"], key=lambda c: c["index"])]
    return Outcome(200, texts, tokens=body["usage"]["completion_tokens"])


async def _send_stream(client: httpx.AsyncClient, spec: Spec, path: str, body: dict) -> Outcome:
    texts = [""] * spec.n
    finished = [False] * spec.n
    tokens = 0
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            return _error_of(response.status_code, await response.aread())
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return Outcome(event["error"].get("code", 0) or 0, error=event["error"])
            tokens += _apply_event(spec, event, texts, finished)
    if not all(finished):
        return Outcome(status=0, error={"message": "stream ended without a finish for every sample"})
    return Outcome(200, texts, tokens=tokens)


def _apply_event(spec: Spec, event: dict, texts: list[str], finished: list[bool]) -> int:
    """Fold one SSE event into the per-sample texts; returns completion tokens it reports."""
    if spec.api == "generate":  # cumulative text per index
        i = event.get("index", 0)
        texts[i] = event["text"]
        finished[i] = event["meta_info"]["finish_reason"] is not None
        return len(event["output_ids"]) if finished[i] else 0
    if event.get("usage"):
        return event["usage"]["completion_tokens"]
    for choice in event["choices"]:
        i = choice["index"]
        delta = choice.get("text") if spec.api == "completions" else (choice.get("delta") or {}).get("content")
        texts[i] += delta or ""
        finished[i] = finished[i] or choice.get("finish_reason") is not None
    return 0


async def run_all(url: str, specs: list[Spec], concurrency: int, timeout: float = 600.0) -> list[Outcome]:
    """Send `specs` with at most `concurrency` in flight (loopback; bounded in time)."""
    # Idle connections are dropped well before the server's 5 s keep-alive ends: reusing one just
    # as the server closes it is a race that fails the request without the server being at fault.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=1.0)
    gate = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, spec: Spec) -> Outcome:
        async with gate:
            return await send(client, spec)

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        return await asyncio.wait_for(asyncio.gather(*(one(client, s) for s in specs)), timeout)


def solo_outputs(url: str, templates: list[Spec]) -> list[list[str]]:
    """Each template alone (non-streamed), one after another: the reference outputs."""

    async def go() -> list[list[str]]:
        async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
            outs = [await send(client, replace(t, stream=False)) for t in templates]
        bad = [(t, o) for t, o in zip(templates, outs) if o.status != 200]
        assert not bad, f"solo requests failed: {bad[:2]}"
        return [o.texts for o in outs]

    return asyncio.run(go())


def run_load(
    url: str, requests: int, concurrency: int, templates: int = 24, long_tokens: int = 96
) -> tuple[dict, list[str]]:
    """The whole check: solo references, the concurrent load, the leak check. Returns the
    summary and a list of problems (empty when every request matched its solo output)."""
    shapes = make_templates(templates, long_tokens=long_tokens)
    reference = solo_outputs(url, shapes)
    specs = make_load(shapes, requests)
    start = time.perf_counter()
    outcomes = asyncio.run(run_all(url, specs, concurrency))
    summary = summarize(outcomes, time.perf_counter() - start)
    problems = []
    for i, (spec, out) in enumerate(zip(specs, outcomes)):
        expected = reference[i % len(shapes)]
        if out.status != 200:
            problems.append(f"request {i} ({spec.api}, stream={spec.stream}): HTTP {out.status} {out.error}")
        elif out.texts != expected:
            problems.append(
                f"request {i} ({spec.api}, stream={spec.stream}, n={spec.n}): {out.texts!r} != solo {expected!r}"
            )
    wait_idle_and_check_leak(url)
    summary["mismatches"] = sum(1 for p in problems if "!= solo" in p)
    summary["leaks"] = 0  # wait_idle_and_check_leak raised otherwise
    return summary, problems


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--url", help="an already running server (default: start one on the tiny model)")
    parser.add_argument("--model-path", help="model for the started server (default: a tiny random Llama)")
    ns = parser.parse_args(argv)
    from stress.server import started_server

    with started_server(ns.url, ns.model_path) as url:
        summary, problems = run_load(url, ns.requests, ns.concurrency)
    print(format_summary(f"load: {ns.requests} requests, concurrency {ns.concurrency}", summary))
    print(f"greedy mismatches vs solo runs: {summary['mismatches']}; KV leaks: {summary['leaks']}")
    for p in problems[:10]:
        print("PROBLEM", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
