"""Prometheus metrics, in a registry owned by the app (no process-global state)."""

from __future__ import annotations

from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Counters updated by the routes; gauges read from the scheduler at scrape time."""

    def __init__(self, info: Callable[[], dict], sglang_model_name: Optional[str] = None) -> None:
        """With `sglang_model_name` (`--enable-metrics`), /metrics also shows SGLang's names."""
        self.registry = CollectorRegistry()
        self._info = info
        self._mirror = None
        if sglang_model_name is not None:
            from radixlm.entrypoints.http.sglang_metrics import sglang_registry

            self._mirror = sglang_registry(self.registry, sglang_model_name)
        r = self.registry
        self.requests = Counter("radixlm_num_requests", "Requests received", registry=r)
        self.finished = Counter("radixlm_num_finished_requests", "Requests finished", ["reason"], registry=r)
        self.prompt_tokens = Counter("radixlm_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("radixlm_generation_tokens", "Tokens generated", registry=r)
        self.cached_tokens = Counter("radixlm_cached_tokens", "Prompt tokens served from the radix cache", registry=r)
        self.ttft = Histogram(
            "radixlm_time_to_first_token_seconds", "Time to first token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "radixlm_inter_token_latency_seconds", "Time between output tokens", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.running = Gauge("radixlm_num_running_reqs", "Requests decoding", registry=r)
        self.queued = Gauge("radixlm_num_queue_reqs", "Requests waiting", registry=r)
        self.kv_usage = Gauge("radixlm_token_usage", "Fraction of KV slots in use or cached", registry=r)
        self.hit_rate = Gauge("radixlm_cache_hit_rate", "Cached prompt tokens / prompt tokens", registry=r)
        self.spec_accept_length = Gauge(
            "radixlm_spec_accept_length", "Speculative decoding: tokens per verify step (0: off)", registry=r
        )
        self.spec_accept_rate = Gauge(
            "radixlm_spec_accept_rate", "Speculative decoding: accepted / proposed draft tokens (0: off)", registry=r
        )

    def on_submit(self, count: int) -> None:
        self.requests.inc(count)

    def on_finish(self, meta: dict) -> None:
        reason = (meta.get("finish_reason") or {}).get("type", "unknown")
        self.finished.labels(reason=reason).inc()
        self.prompt_tokens.inc(meta.get("prompt_tokens", 0))
        self.generation_tokens.inc(meta.get("completion_tokens", 0))
        self.cached_tokens.inc(meta.get("cached_tokens", 0))

    def render(self) -> bytes:
        info = self._info()
        self.running.set(info["num_running_reqs"])
        self.queued.set(info["num_waiting_reqs"])
        total = info["max_total_num_tokens"]
        self.kv_usage.set((total - info["available_kv_tokens"]) / total if total else 0.0)
        prompt = self.prompt_tokens._value.get()
        self.hit_rate.set(self.cached_tokens._value.get() / prompt if prompt else 0.0)
        self.spec_accept_length.set(info.get("avg_spec_accept_length") or 0.0)
        self.spec_accept_rate.set(info.get("spec_accept_rate") or 0.0)
        ours = generate_latest(self.registry)
        return ours + generate_latest(self._mirror) if self._mirror is not None else ours
