"""What every route needs: the engine, the served name, metrics, a thread that prepares
requests off the event loop, and a request runner that records metrics and aborts requests
whose client went away."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional, TypeVar

from fastapi import Request

from radixlm.entrypoints.engine import Engine
from radixlm.entrypoints.http.errors import APIError
from radixlm.entrypoints.http.image_sources import bare_base64, load_image_sources
from radixlm.entrypoints.http.limits import check_sampling_limits
from radixlm.entrypoints.http.media import MediaPolicy, MediaRejected, vet_images
from radixlm.entrypoints.http.metrics import Metrics
from radixlm.entrypoints.request_output import OutputAccumulator, RequestFailed
from radixlm.entrypoints.request_plan import RequestPlan
from radixlm.ipc.finish import FinishAbort
from radixlm.ipc.messages import TokenizedGenerateReq
from radixlm.ipc.runtime_client import SchedulerDied

T = TypeVar("T")


def _preparation_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="radixlm-prepare")


@dataclass
class ServerState:
    engine: Engine
    model_name: str
    metrics: Metrics
    api_key: Optional[str] = None
    media: MediaPolicy = field(default_factory=MediaPolicy)
    created: int = field(default_factory=lambda: int(time.time()))
    in_flight: set[str] = field(default_factory=set)  # request ids being served (for abort_all)
    _flight_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _prep: ThreadPoolExecutor = field(default_factory=_preparation_thread, repr=False)

    async def prepare(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the preparation thread: tokenizing, chat templates and grammar
        checks take seconds for a multi-megabyte prompt or a large schema, and on the event loop
        they would stall every other request's stream (and /health) meanwhile. One thread, so the
        tokenizer and the grammar caches see one caller at a time, in arrival order; exceptions
        (an APIError for bad input) propagate to the awaiting route."""
        return await asyncio.get_running_loop().run_in_executor(self._prep, functools.partial(fn, *args, **kwargs))

    def abort_all(self) -> int:
        """Abort every request being served (server shutdown): each ends with finish_reason
        "abort" instead of being cut off. Returns how many were aborted."""
        with self._flight_lock:
            rids = list(self.in_flight)
        for rid in rids:
            self.engine.abort(rid)
        return len(rids)

    def token_room(self, prompt_len: int) -> int:
        """How many tokens a prompt of `prompt_len` leaves for output: bounded by the context and,
        when it is smaller, the KV pool (a longer request could never finish)."""
        limits = self.engine.limits
        return min(limits.context_length, limits.kv_capacity) - prompt_len

    def vet_images(self, urls: list[str], param: str) -> None:
        """400 for an image source the media policy refuses, and for any image at all while the
        served model is text-only (bare base64 carries its bytes: nothing to vet). Never reads a
        file or opens a connection."""
        try:
            urls = [u for u in urls if not (isinstance(u, str) and bare_base64(u) is not None)]
            vet_images(self.media, urls, accepts_images=self.engine.images is not None)
        except MediaRejected as exc:
            raise APIError(400, str(exc), param) from None

    def check_lora(self, lora_path: Any) -> None:
        """400 naming `lora_path` when it names an adapter this server does not serve."""
        try:
            self.engine.check_lora_path(lora_path)
        except ValueError as exc:
            raise APIError(400, f"lora_path: {exc}", "lora_path") from None

    def make_requests(self, **kwargs: Any) -> tuple[list[TokenizedGenerateReq], bool]:
        """Engine.make_requests after the front's limits (see `limits`), ValueError turned into a 400.
        `image_data` sources (already vetted by `vet_images`) are read here, under the media policy."""
        plan = self.plan_requests(**kwargs)
        try:
            return plan.all(), plan.batched
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    def plan_requests(self, **kwargs: Any) -> RequestPlan:
        """`make_requests` without preparing images here (this runs on the preparation thread):
        they are prepared on the engine's image pool, and `requests` awaits them."""
        try:
            if kwargs.get("image_data") is not None:
                kwargs["image_data"] = load_image_sources(self.media, kwargs["image_data"])
            check_sampling_limits(kwargs.get("sampling_params"))
            return self.engine.plan_requests(**kwargs)
        except (ValueError, TypeError) as exc:
            raise APIError(400, str(exc)) from None
        except RecursionError:
            raise APIError(400, "the request is nested too deeply to process") from None

    async def requests(self, plan: RequestPlan) -> list[TokenizedGenerateReq]:
        """Every request of `plan`, its images awaited on the event loop (so the preparation
        thread goes on with other requests meanwhile); a bad image is a 400 naming it."""
        try:
            return await plan.aall()
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    async def stream(self, reqs: list[TokenizedGenerateReq]) -> AsyncIterator[tuple[int, OutputAccumulator]]:
        """Yield (request index, accumulator) per message, recording metrics; the engine aborts
        unfinished requests when this iterator is closed (client gone). A dead engine is a 503."""
        index = {r.rid: i for i, r in enumerate(reqs)}
        timers = {r.rid: _Timer(time.perf_counter()) for r in reqs}
        self.metrics.on_submit(len(reqs))
        with self._flight_lock:
            self.in_flight.update(index)
        try:
            async for rid, acc in self.engine.iterate_async(reqs):
                timers[rid].tick(self.metrics, len(acc.last_chunk["output_ids"]))
                if acc.done:
                    self.metrics.on_finish(acc.meta)
                    _raise_if_rejected(acc)
                yield index[rid], acc
        except (SchedulerDied, RequestFailed) as exc:
            raise APIError(503, (str(exc) or "the engine cannot serve requests").splitlines()[0]) from None
        finally:
            with self._flight_lock:
                self.in_flight.difference_update(index)

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
        task.result()  # re-raises the APIError of a rejected request or a dead engine
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
    if isinstance(acc.finish, FinishAbort) and acc.finish.is_rejection:
        raise APIError(400, acc.finish.message)
