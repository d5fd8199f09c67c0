"""Faults: clients that vanish at random points, SIGTERM under load, a killed scheduler.

cd tests && python -m stress.faults --disconnects 300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Optional

import httpx

from stress.common import format_summary, summarize, wait_idle_and_check_leak
from stress.load import Outcome, Spec, run_all

POINTS = ("before_first_token", "mid_stream", "during_prefill", "non_streaming")
LONG_PROMPT = "hello world the quick brown fox " * 60  # ~300 tokens of prefill


async def disconnect(client: httpx.AsyncClient, point: str, rng: random.Random) -> str:
    """One request abandoned at `point`; returns the point actually reached."""
    if point == "during_prefill":
        body = {"text": LONG_PROMPT + str(rng.random()), "sampling_params": {"max_new_tokens": 64}}
        task = asyncio.create_task(client.post("/generate", json=body))
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return point
    if point == "non_streaming":
        body = {"text": f"wave {rng.random()}", "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}
        task = asyncio.create_task(client.post("/generate", json=body))
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return point
    body = {
        "messages": [{"role": "user", "content": f"tell me {rng.random()}"}],
        "max_tokens": 400,
        "stream": True,
        "ignore_eos": True,
    }
    events_wanted = 0 if point == "before_first_token" else rng.randint(2, 20)
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        seen = 0
        if events_wanted:  # else leave right after the headers, before any event
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= events_wanted:
                    break
    return point


async def disconnect_storm(url: str, count: int, concurrency: int = 32, seed: int = 0) -> Counter:
    """`count` requests abandoned at random points, `concurrency` at a time."""
    rng = random.Random(seed)
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=0)

    async def one(client: httpx.AsyncClient, point: str) -> str:
        async with gate:
            return await disconnect(client, point, rng)

    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        points = [rng.choice(POINTS) for _ in range(count)]
        done = await asyncio.wait_for(asyncio.gather(*(one(client, p) for p in points)), 300)
    return Counter(done)


def sigterm_under_load(
    url: str,
    proc: subprocess.Popen,
    requests: int = 64,
    after_s: float = 0.5,
) -> tuple[list[Outcome], float, float]:
    """Start `requests` long requests (streamed and not), SIGTERM the server after `after_s`.
    Returns every request's outcome (completed or failed; none may hang), the load's wall time
    and the seconds from SIGTERM to the server's exit."""
    specs = [
        Spec(
            api="generate" if i % 2 else "chat", prompt=f"term {i}", max_tokens=400, ignore_eos=True, stream=i % 3 != 0
        )
        for i in range(requests)
    ]

    async def go() -> tuple[list[Outcome], float, float]:
        start = time.monotonic()
        load = asyncio.create_task(run_all(url, specs, concurrency=requests, timeout=60.0))
        await asyncio.sleep(after_s)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        outcomes = await load
        wall = time.monotonic() - start
        while proc.poll() is None and time.monotonic() - sent < 30:
            await asyncio.sleep(0.1)
        return outcomes, wall, time.monotonic() - sent

    return asyncio.run(go())


def scheduler_pid(server_pid: int) -> int:
    """The server's scheduler child (a multiprocessing spawn child, not the resource tracker)."""
    from helpers.server_utils import child_pids

    for pid in child_pids(server_pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                return pid
    raise AssertionError(f"no scheduler process under {server_pid}")


def kill_scheduler(url: str, proc: subprocess.Popen) -> tuple[list[int], float, int]:
    """SIGKILL the scheduler while a request runs; returns the /health codes seen (0: refused),
    the seconds until the server exited, and its exit code."""
    os.kill(scheduler_pid(proc.pid), signal.SIGKILL)
    killed, codes = time.monotonic(), []
    while proc.poll() is None and time.monotonic() - killed < 15:
        try:
            codes.append(httpx.get(f"{url}/health", timeout=1.0).status_code)
        except httpx.HTTPError:
            codes.append(0)
        time.sleep(0.05)
    return codes, time.monotonic() - killed, proc.returncode


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disconnects", type=int, default=300)
    parser.add_argument("--term-requests", type=int, default=128)
    ns = parser.parse_args(argv)
    from helpers.server_utils import child_pids, launch_server, pid_alive, stop

    from stress.server import tiny_model_dir

    with tiny_model_dir() as model:
        url, proc = launch_server(model)
        try:
            start = time.perf_counter()
            points = asyncio.run(disconnect_storm(url, ns.disconnects))
            wall = time.perf_counter() - start
            info = wait_idle_and_check_leak(url)
            print(f"== disconnects: {sum(points.values())} requests abandoned in {wall:.1f} s: {dict(points)}")
            print(f"after: {info['available_kv_tokens']} of {info['max_total_num_tokens']} KV slots free; leaks 0")
            children = child_pids(proc.pid)
            outcomes, wall, exit_s = sigterm_under_load(url, proc, ns.term_requests)
            deadline = time.monotonic() + 5  # the resource tracker exits just after the server
            while any(pid_alive(c) for c in children) and time.monotonic() < deadline:
                time.sleep(0.1)
            orphans = [c for c in children if pid_alive(c)]
            print(format_summary(f"SIGTERM during load ({ns.term_requests} requests)", summarize(outcomes, wall)))
            print(f"server exit code {proc.returncode} {exit_s:.1f} s after SIGTERM; orphans {orphans}")
        finally:
            if proc.poll() is None:
                stop(proc)
        url, proc = launch_server(model)
        try:
            codes, exit_s, code = kill_scheduler(url, proc)
            print(
                f"== scheduler SIGKILLed: /health answers {dict(Counter(codes))} (0 = refused); "
                f"server exited with code {code} after {exit_s:.1f} s"
            )
        finally:
            if proc.poll() is None:
                stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
