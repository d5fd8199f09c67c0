"""Streaming request functions of `bench_serving`, one payload shape and one event parser per API.

- `radixlm` / `sglang`: native `POST /generate`, `stream: true`; each `data:` event holds the
  cumulative `text` and `meta_info` (`prompt_tokens`, `completion_tokens`, `cached_tokens`).
- `openai` / `vllm`: `POST /v1/completions`, `stream: true`; text deltas in `choices[0].text`.
- `openai-chat`: `POST /v1/chat/completions`, `stream: true`; deltas in `choices[0].delta.content`.

Both OpenAI forms ask for `stream_options.include_usage`, so exact token counts (and cached
tokens, where the server reports `prompt_tokens_details`) come in the last event; a server that
sends no usage gets its output re-tokenized with the client's tokenizer instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import httpx

from radixlm.bench.datasets import BenchRequest
from radixlm.bench.metrics import RequestResult

BACKENDS = ("radixlm", "sglang", "openai", "openai-chat", "vllm")
NATIVE = ("radixlm", "sglang")
ROUTES = {
    "radixlm": "/generate",
    "sglang": "/generate",
    "openai": "/v1/completions",
    "vllm": "/v1/completions",
    "openai-chat": "/v1/chat/completions",
}


@dataclass(frozen=True)
class RequestConfig:
    """What every request of a run shares."""

    backend: str
    base_url: str
    model: str
    ignore_eos: bool = True
    tokenize_prompt: bool = False
    extra_body: Optional[dict] = None
    api_key: Optional[str] = None

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + ROUTES[self.backend]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def build_payload(cfg: RequestConfig, req: BenchRequest) -> dict[str, Any]:
    """The JSON body for `req`: greedy, `output_len` tokens, streamed."""
    if cfg.backend in NATIVE:
        prompt = {"input_ids": req.prompt_ids} if cfg.tokenize_prompt else {"text": req.prompt}
        body = {
            **prompt,
            "stream": True,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": req.output_len, "ignore_eos": cfg.ignore_eos},
        }
    else:
        body = {
            "model": cfg.model,
            "temperature": 0.0,
            "max_tokens": req.output_len,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if cfg.ignore_eos:
            body["ignore_eos"] = True
        if cfg.backend == "openai-chat":
            body["messages"] = [{"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt_ids if cfg.tokenize_prompt else req.prompt
    return {**body, **(cfg.extra_body or {})}


class StreamParser:
    """Folds a request's `data:` events into a RequestResult (times relative to `sent`)."""

    def __init__(self, backend: str, sent: float) -> None:
        self.native = backend in NATIVE
        self.chat = backend == "openai-chat"
        self.sent = sent
        self.last_event = sent
        self.result = RequestResult(start=sent)
        self.tokens_seen = 0
        self.usage: Optional[dict] = None

    def feed(self, data: dict, now: float) -> None:
        """One decoded event; raises RuntimeError on an error event."""
        if "error" in data and data["error"]:
            raise RuntimeError(str(data["error"]))
        new_tokens = self._native(data) if self.native else self._openai(data)
        if new_tokens > 0:
            self._content_event(now, new_tokens)

    def _native(self, data: dict) -> int:
        meta = data.get("meta_info", {})
        self.result.text = data.get("text", self.result.text)
        self.result.prompt_len = meta.get("prompt_tokens", self.result.prompt_len)
        self.result.cached_tokens = meta.get("cached_tokens", self.result.cached_tokens)
        total = meta.get("completion_tokens", self.tokens_seen)
        new, self.tokens_seen = total - self.tokens_seen, total
        return new

    def _openai(self, data: dict) -> int:
        if data.get("usage"):
            self.usage = data["usage"]
        choices = data.get("choices") or []
        if not choices:
            return 0
        piece = (choices[0].get("delta") or {}).get("content") if self.chat else choices[0].get("text")
        if not piece:
            return 0
        self.result.text += piece
        return 1  # an estimate per event; the totals come from `usage` at the end

    def _content_event(self, now: float, tokens: int) -> None:
        if not self.result.events:
            self.result.ttft = now - self.sent
        else:
            self.result.itl.append(now - self.last_event)
        self.last_event = now
        self.result.events.append((now - self.sent, tokens))

    def finish(self, now: float, req: BenchRequest, count_tokens: Callable[[str], int]) -> RequestResult:
        """Final counts: the server's usage when it sent one, else the dataset / re-tokenization."""
        r = self.result
        r.latency = now - self.sent
        if self.native:
            r.output_len = self.tokens_seen
        elif self.usage:
            r.prompt_len = self.usage.get("prompt_tokens", req.prompt_len)
            r.output_len = self.usage.get("completion_tokens", 0)
            r.cached_tokens = (self.usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            self._rescale_events(r.output_len)
        else:
            r.prompt_len, r.output_len = req.prompt_len, count_tokens(r.text)
            self._rescale_events(r.output_len)
        r.prompt_len = r.prompt_len or req.prompt_len
        r.success = bool(r.events)
        if not r.success:
            r.error = "no content in the stream"
        return r

    def _rescale_events(self, total: int) -> None:
        """Spread the exact output count over the events (OpenAI chunks carry no token counts)."""
        events = self.result.events
        if events:
            share = total / len(events)
            self.result.events = [(t, share) for t, _ in events]


async def send_request(
    client: httpx.AsyncClient, cfg: RequestConfig, req: BenchRequest, count_tokens: Callable[[str], int]
) -> RequestResult:
    """Send one streaming request; never raises (failures come back with `success=False`)."""
    sent = time.perf_counter()
    parser = StreamParser(cfg.backend, sent)
    try:
        async with client.stream("POST", cfg.url, json=build_payload(cfg, req), headers=cfg.headers) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                return RequestResult(error=f"HTTP {resp.status_code}: {body[:500]}", start=sent)
            async for line in resp.aiter_lines():
                _feed_line(parser, line)
        return parser.finish(time.perf_counter(), req, count_tokens)
    except (httpx.HTTPError, RuntimeError, ValueError) as exc:
        return RequestResult(error=f"{type(exc).__name__}: {exc}", start=sent)


def _feed_line(parser: StreamParser, line: str) -> None:
    line = line.strip()
    if not line.startswith("data:"):
        return
    payload = line[len("data:") :].strip()
    if payload and payload != "[DONE]":
        parser.feed(json.loads(payload), time.perf_counter())
