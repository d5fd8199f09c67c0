"""Accumulates a request's streamed outputs into SGLang-shaped result dicts, and hands outputs from
the receiver thread to an async caller's event loop (`loop_putter`)."""

from __future__ import annotations

import asyncio
from typing import Callable, Optional

from radixlm.ipc.finish import FinishAbort, FinishReason
from radixlm.ipc.messages import ReqOutput


def cached_tokens_details(meta: dict) -> Optional[dict]:
    """SGLang's breakdown of a request's cached prompt tokens by tier: all on the device here (no host
    or storage tier); None when no prompt token came from the cache, as SGLang reports it."""
    cached = meta.get("cached_tokens", 0)
    return {"device": cached, "host": 0} if cached > 0 else None


class RequestFailed(RuntimeError):
    """The runtime could not serve the request (e.g. the scheduler process died)."""


class OutputAccumulator:
    """Invariant: `text`/`output_ids` are the concatenation of every delta received;
    `done` turns True exactly once, on the message carrying a finish_reason."""

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.text = ""
        self.output_ids: list[int] = []
        self.meta: dict = {"id": rid}
        self.done = False
        self.last_chunk: Optional[dict] = None
        self.finish: Optional[FinishReason] = None
        self.embedding: Optional[list[float]] = None

    def add(self, out: ReqOutput) -> bool:
        """Take one message; returns True when it is the final one."""
        self.text += out.text_delta
        self.output_ids.extend(out.new_ids)
        self.meta.update(out.meta)
        if out.embedding is not None:
            self.embedding = out.embedding
        details = cached_tokens_details(self.meta)
        if details is not None:
            self.meta["cached_tokens_details"] = details
        if out.finish_reason is not None:
            self.done = True
            self.finish = out.finish_reason
            self.meta["finish_reason"] = out.finish_reason.to_json()
        return self.done

    def result(self) -> dict:
        """The whole result: {"text", "output_ids", "meta_info"}. A request the scheduler refused
        as invalid (abort with status 400, e.g. a grammar that failed to compile) raises ValueError."""
        self._raise_if_failed()
        if isinstance(self.finish, FinishAbort) and self.finish.is_rejection:
            raise ValueError(self.finish.message)
        return {"text": self.text, "output_ids": list(self.output_ids), "meta_info": dict(self.meta)}

    def embedding_result(self) -> dict:
        """An embedding request's result, SGLang's shape: {"embedding", "meta_info"}."""
        self.result()  # raises as `result` does for a refused or failed request
        return {"embedding": self.embedding, "meta_info": dict(self.meta)}

    def chunk(self, out: ReqOutput, index: int = 0) -> dict:
        """An incremental streaming chunk: only the new text and ids, with the latest meta_info."""
        self._raise_if_failed()
        return {"text": out.text_delta, "output_ids": list(out.new_ids), "meta_info": dict(self.meta), "index": index}

    def _raise_if_failed(self) -> None:
        if isinstance(self.finish, FinishAbort) and self.finish.is_failure:
            raise RequestFailed(self.finish.message)


def loop_putter(loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue) -> Callable[[ReqOutput], None]:
    """A callback (run on the receiver thread) that hands outputs to `inbox` on `loop`.

    Outputs of an aborted request can still arrive after its caller's loop has closed (an
    abandoned stream under `asyncio.run`); they are dropped, since raising here would kill
    the receiver thread and hang every later request."""

    def put(out: ReqOutput) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, out)
        except RuntimeError:  # the loop is closed: nobody is waiting for this output
            pass

    return put
