"""The requests of one Engine call while their images are still being prepared: every check
that needs no image has passed, and each prompt's requests are built as soon as its images
are ready, so the caller can submit early prompts while later images are still processed."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator, Optional

from radixlm.ipc.messages import TokenizedGenerateReq


@dataclass
class PendingPrompt:
    """One prompt of a call: `build(prepared)` makes its requests (ValueError naming a problem)
    from the result of `prepared` (its images' `PreparedPrompt`), or from None when the prompt
    has no images (`prepared` None)."""

    prepared: Optional[Future]
    build: Callable[[Any], list[TokenizedGenerateReq]]

    def requests(self) -> list[TokenizedGenerateReq]:
        """Its requests, waiting for its images (an image's ImageError propagates)."""
        return self.build(None if self.prepared is None else self.prepared.result())


class RequestPlan:
    """The requests of a call, prompt by prompt in call order. Invariants: `rids` lists every
    request id the call will submit, in order, distinct and not in flight when the plan was
    made; iterating yields each prompt's requests in order, the first failing prompt's
    ValueError ends the iteration (then the preparations not yet started are cancelled)."""

    def __init__(self, prompts: list[PendingPrompt], rids: list[str], batched: bool) -> None:
        self.prompts = prompts
        self.rids = rids
        self.batched = batched

    @classmethod
    def ready(cls, reqs: list[TokenizedGenerateReq], batched: bool = True) -> "RequestPlan":
        """A plan of requests already built."""
        return cls([PendingPrompt(None, lambda _: reqs)], [r.rid for r in reqs], batched)

    def __iter__(self) -> Iterator[list[TokenizedGenerateReq]]:
        try:
            for prompt in self.prompts:
                yield prompt.requests()
        except BaseException:
            self.cancel()
            raise

    async def aiter(self) -> AsyncIterator[list[TokenizedGenerateReq]]:
        """`iter(plan)` for an event loop: each prompt's images are awaited, never blocked on."""
        try:
            for prompt in self.prompts:
                if prompt.prepared is not None:
                    await asyncio.wrap_future(prompt.prepared)
                yield prompt.requests()
        except BaseException:
            self.cancel()
            raise

    def all(self) -> list[TokenizedGenerateReq]:
        """Every request of the call (waits for all images)."""
        return [req for reqs in self for req in reqs]

    async def aall(self) -> list[TokenizedGenerateReq]:
        """`all()` awaited on an event loop."""
        return [req for reqs in [r async for r in self.aiter()] for req in reqs]

    def cancel(self) -> None:
        """Drop the preparations that have not started (those running finish unobserved)."""
        for prompt in self.prompts:
            if prompt.prepared is not None:
                prompt.prepared.cancel()
