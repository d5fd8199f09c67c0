"""What one benchmark request measured, the run's summary metrics, and SGLang's printed layout.

Times are seconds on the client's monotonic clock; the summary reports latencies in ms.
TTFT is send → first event carrying generated text; ITL is the gap between successive
content events (a streamed chunk may hold several tokens, as in SGLang's tool); TPOT is
(E2E − TTFT) / (output tokens − 1); concurrency is the sum of E2E latencies / duration.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

TITLE_WIDTH = 50
LABEL_WIDTH = 40


@dataclass
class RequestResult:
    """One request as the client saw it. `events` are (seconds after `start`, tokens in that event);
    `start` is relative to the run's start once the run is over."""

    success: bool = False
    error: str = ""
    start: float = 0.0
    ttft: float = 0.0
    latency: float = 0.0
    prompt_len: int = 0
    output_len: int = 0
    cached_tokens: Optional[int] = None
    itl: list[float] = field(default_factory=list)
    events: list[tuple[float, float]] = field(default_factory=list)
    text: str = ""

    @property
    def tpot(self) -> Optional[float]:
        return (self.latency - self.ttft) / (self.output_len - 1) if self.output_len > 1 else None


@dataclass(frozen=True)
class Stats:
    """mean / median / p99 (and more) of one latency, in ms."""

    mean: float
    median: float
    std: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: list[float]) -> "Stats":
        if not seconds:
            return cls(*(float("nan"),) * 6)
        ms = np.asarray(seconds) * 1000.0
        return cls(
            float(ms.mean()),
            float(np.median(ms)),
            float(ms.std()),
            float(np.percentile(ms, 95)),
            float(np.percentile(ms, 99)),
            float(ms.max()),
        )


@dataclass(frozen=True)
class ServingMetrics:
    """The summary of one run (SGLang's quantities, plus the cache hit rate)."""

    completed: int
    failed: int
    duration: float
    total_input: int
    total_output: int
    request_throughput: float
    input_throughput: float
    output_throughput: float
    total_throughput: float
    peak_output_throughput: float
    peak_concurrent_requests: int
    concurrency: float
    cache_hit_rate: Optional[float]
    e2e: Stats
    ttft: Stats
    tpot: Stats
    itl: Stats

    def flat(self) -> dict[str, Any]:
        """Flat keys for the JSONL record: `mean_ttft_ms`, `p99_itl_ms`, ..."""
        out = {k: v for k, v in asdict(self).items() if not isinstance(v, dict)}
        for name in ("e2e", "ttft", "tpot", "itl"):
            for stat, value in asdict(getattr(self, name)).items():
                out[f"{stat}_{name}_ms"] = value
        return out


def compute_metrics(results: list[RequestResult], duration: float, bin_seconds: float = 1.0) -> ServingMetrics:
    """Summarize the successful requests of a run that lasted `duration` seconds. The peak output
    throughput is the best `bin_seconds` window (the whole run when it is shorter)."""
    ok = [r for r in results if r.success]
    total_in, total_out = sum(r.prompt_len for r in ok), sum(r.output_len for r in ok)
    with_cache = [r for r in ok if r.cached_tokens is not None]
    hit = (
        sum(r.cached_tokens for r in with_cache) / max(sum(r.prompt_len for r in with_cache), 1) if with_cache else None
    )
    _, tokens = timeline(ok, duration, min(bin_seconds, duration))
    return ServingMetrics(
        completed=len(ok),
        failed=len(results) - len(ok),
        duration=duration,
        total_input=total_in,
        total_output=total_out,
        request_throughput=len(ok) / duration,
        input_throughput=total_in / duration,
        output_throughput=total_out / duration,
        total_throughput=(total_in + total_out) / duration,
        peak_output_throughput=float(max(tokens, default=0.0)),
        peak_concurrent_requests=peak_in_flight(ok),
        concurrency=sum(r.latency for r in ok) / duration,
        cache_hit_rate=hit,
        e2e=Stats.of([r.latency for r in ok]),
        ttft=Stats.of([r.ttft for r in ok]),
        tpot=Stats.of([t for r in ok if (t := r.tpot) is not None]),
        itl=Stats.of([g for r in ok for g in r.itl]),
    )


def timeline(results: list[RequestResult], duration: float, bin_seconds: float) -> tuple[list[float], list[float]]:
    """Bin starts and output tok/s in each bin (`start` of every result relative to the run's start)."""
    bins = max(1, int(np.ceil(duration / bin_seconds)))
    starts = [i * bin_seconds for i in range(bins)]
    tokens = [0.0] * bins
    for r in results:
        for t, n in r.events:
            tokens[min(int((r.start + t) / bin_seconds), bins - 1)] += n
    return starts, [n / bin_seconds for n in tokens]


def in_flight_curve(results: list[RequestResult]) -> tuple[list[float], list[int]]:
    """Requests in flight as a step function: the count from each time on (a sweep over starts and ends)."""
    edges = sorted(
        [(r.start, 1) for r in results] + [(r.start + r.latency, -1) for r in results], key=lambda e: (e[0], e[1])
    )
    times, counts, running = [0.0], [0], 0
    for t, step in edges:
        running += step
        times.append(t)
        counts.append(running)
    return times, counts


def peak_in_flight(results: list[RequestResult]) -> int:
    """The most requests in flight at any instant."""
    return max(in_flight_curve(results)[1])


def _row(label: str, value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.2f}"
    return f"{label:<{LABEL_WIDTH}} {value:<10}"


def _latency_rows(title: str, short: str, stats: Stats, extra: tuple[str, ...] = ()) -> list[str]:
    rows = [
        f"{title:-^{TITLE_WIDTH}}",
        _row(f"Mean {short} (ms):", stats.mean),
        _row(f"Median {short} (ms):", stats.median),
    ]
    if "p95" in extra:
        rows.append(_row(f"P95 {short} (ms):", stats.p95))
    rows.append(_row(f"P99 {short} (ms):", stats.p99))
    if "max" in extra:
        rows.append(_row(f"Max {short} (ms):", stats.max))
    return rows


def format_serving(m: ServingMetrics, backend: str, request_rate: float, max_concurrency: Optional[int]) -> str:
    """SGLang's `Serving Benchmark Result` block, with our cache hit rate after Concurrency."""
    hit = "n/a (not reported)" if m.cache_hit_rate is None else f"{100 * m.cache_hit_rate:.2f}%"
    rows = [
        f"{' Serving Benchmark Result ':=^{TITLE_WIDTH}}",
        _row("Backend:", backend),
        _row("Traffic request rate:", request_rate),
        _row("Max request concurrency:", max_concurrency if max_concurrency else "not set"),
        _row("Successful requests:", m.completed),
        _row("Failed requests:", m.failed),
        _row("Benchmark duration (s):", m.duration),
        _row("Total input tokens:", m.total_input),
        _row("Total generated tokens:", m.total_output),
        _row("Request throughput (req/s):", m.request_throughput),
        _row("Input token throughput (tok/s):", m.input_throughput),
        _row("Output token throughput (tok/s):", m.output_throughput),
        _row("Peak output token throughput (tok/s):", m.peak_output_throughput),
        _row("Peak concurrent requests:", m.peak_concurrent_requests),
        _row("Total token throughput (tok/s):", m.total_throughput),
        _row("Concurrency:", m.concurrency),
        _row("Cache hit rate:", hit),
    ]
    rows += _latency_rows("End-to-End Latency", "E2E Latency", m.e2e)
    rows += _latency_rows("Time to First Token", "TTFT", m.ttft)
    rows += _latency_rows("Time per Output Token (excl. 1st token)", "TPOT", m.tpot)
    rows += _latency_rows("Inter-Token Latency", "ITL", m.itl, ("p95", "max"))
    return "\n".join(rows + ["=" * TITLE_WIDTH])


def format_block(title: str, rows: list[tuple[str, Any]]) -> str:
    """A titled block of `label: value` rows in the same layout (used by the offline benchmark)."""
    lines = [f"{' ' + title + ' ':=^{TITLE_WIDTH}}"] + [_row(label, value) for label, value in rows]
    return "\n".join(lines + ["=" * TITLE_WIDTH])


def append_jsonl(path: str, record: dict) -> None:
    """Append one strict-JSON line (the file is created if missing): infinities become "inf" /
    "-inf" and NaNs null, so that `jq` and other strict parsers read it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_finite(record), allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
