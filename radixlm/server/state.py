"""What every route needs: the engine, the served name, metrics, and a request runner that
records metrics and aborts requests whose client went away."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from fastapi import Request

from radixlm.engine import Engine
from radixlm.io_struct import TokenizedGenerateReq
from radixlm.request_output import OutputAccumulator, RequestFailed
from radixlm.server.errors import APIError
from radixlm.server.metrics import Metrics


@dataclass
class ServerState:
    engine: Engine
    model_name: str
    metrics: Metrics
    api_key: Optional[str] = None
    created: int = field(default_factory=lambda: int(time.time()))

    def make_requests(self, **kwargs: Any) -> tuple[list[TokenizedGenerateReq], bool]:
        """Engine.make_requests with ValueError turned into a 400."""
        try:
            return self.engine.make_requests(**kwargs)
        except (ValueError, TypeError) as exc:
            raise APIError(400, str(exc)) from None

    async def stream(self, reqs: list[TokenizedGenerateReq]) -> AsyncIterator[tuple[int, OutputAccumulator]]:
        """Yield (request index, accumulator) per message, recording metrics; the engine aborts
        unfinished requests when this iterator is closed (client gone)."""
        index = {r.rid: i for i, r in enumerate(reqs)}
        timers = {r.rid: _Timer(time.perf_counter()) for r in reqs}
        self.metrics.on_submit(len(reqs))
        async for rid, acc in self.engine.iterate_async(reqs):
            timers[rid].tick(self.metrics, len(acc.last_chunk["output_ids"]))
            if acc.done:
                self.metrics.on_finish(acc.meta)
                _raise_if_rejected(acc)
            yield index[rid], acc

    async def run(self, reqs: list[TokenizedGenerateReq], request: Request) -> list[OutputAccumulator]:
        """Run to completion; abort everything if the client disconnects first."""
        accs: dict[int, OutputAccumulator] = {}

        async def consume() -> None:
            async for i, acc in self.stream(reqs):
                accs[i] = acc

        task = asyncio.create_task(consume())
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done and await request.is_disconnected():
                task.cancel()
                raise APIError(499, "client disconnected")
        try:
            task.result()
        except RequestFailed as exc:
            raise APIError(503, str(exc)) from None
        return [accs[i] for i in range(len(reqs))]


@dataclass
class _Timer:
    start: float
    last: Optional[float] = None

    def tick(self, metrics: Metrics, new_tokens: int) -> None:
        if new_tokens <= 0:
            return
        now = time.perf_counter()
        if self.last is None:
            metrics.ttft.observe(now - self.start)
        else:
            metrics.itl.observe((now - self.last) / new_tokens)
        self.last = now


def _raise_if_rejected(acc: OutputAccumulator) -> None:
    reason = acc.meta.get("finish_reason") or {}
    if reason.get("type") == "abort" and reason.get("status_code") == 400:
        raise APIError(400, reason.get("message", "bad request"))
