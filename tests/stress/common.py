"""Shared pieces of the reliability drivers: server info, the KV leak check, latency figures."""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx


@dataclass
class Outcome:
    """What one client request ended with. `status` is the HTTP code (0: no response)."""

    status: int
    texts: list[str] = field(default_factory=list)
    latency_s: float = 0.0
    tokens: int = 0
    error: Optional[dict] = None


def server_info(url: str, headers: Optional[dict] = None) -> dict:
    return httpx.get(f"{url}/get_server_info", headers=headers, timeout=30.0).json()


def wait_idle_and_check_leak(url: str, timeout: float = 60.0, headers: Optional[dict] = None) -> dict:
    """Wait until nothing runs and every KV slot is free or held by the radix tree; then flush
    the tree and require every slot free. Returns the last info; AssertionError on a leak."""
    deadline = time.monotonic() + timeout
    while True:
        info = server_info(url, headers)
        idle = info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0
        if idle and info["available_kv_tokens"] + info["cached_tokens"] == info["max_total_num_tokens"]:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"KV leak or stuck requests after {timeout} s: {info}")
        time.sleep(0.2)
    assert httpx.post(f"{url}/flush_cache", headers=headers, timeout=30.0).status_code == 200
    info = server_info(url, headers)
    leaked = info["max_total_num_tokens"] - info["available_kv_tokens"]
    assert leaked == 0, f"{leaked} KV slots neither free nor cached after a flush: {info}"
    return info


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(outcomes: list[Outcome], wall_s: float) -> dict[str, Any]:
    """Requests sent, completed, errors by code, p50/p99 latency, throughput."""
    codes = Counter(o.status for o in outcomes)
    done = [o for o in outcomes if o.status == 200]
    lat = [o.latency_s for o in done]
    tokens = sum(o.tokens for o in done)
    return {
        "sent": len(outcomes),
        "completed": len(done),
        "errors_by_code": {str(k): v for k, v in sorted(codes.items()) if k != 200},
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
        "mean_s": statistics.fmean(lat) if lat else float("nan"),
        "wall_s": wall_s,
        "req_per_s": len(done) / wall_s if wall_s else 0.0,
        "output_tok_per_s": tokens / wall_s if wall_s else 0.0,
    }


def format_summary(title: str, s: dict[str, Any]) -> str:
    load = os.getloadavg()
    return (
        f"== {title} ==\n"
        f"requests sent {s['sent']}, completed {s['completed']}, errors by code {s['errors_by_code'] or '{}'}\n"
        f"latency p50 {s['p50_s']:.3f} s, p99 {s['p99_s']:.3f} s, mean {s['mean_s']:.3f} s\n"
        f"throughput {s['req_per_s']:.1f} req/s, {s['output_tok_per_s']:.1f} output tok/s "
        f"over {s['wall_s']:.1f} s\n"
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)"
    )
