"""Compiles grammars off the scheduler loop and holds the requests waiting for them."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import torch

from radixlm.constrained import limits
from radixlm.constrained.base import GrammarBackend
from radixlm.constrained.budget_close import ClosingGrammar, closer_tokens
from radixlm.constrained.reasoning_gate import GatedGrammar
from radixlm.constrained.router import GrammarRouter
from radixlm.constrained.spec import GrammarSpec
from radixlm.scheduler.request import Req

COMPILED_CACHE_SIZE = 256


@dataclass
class _Pending:
    req: Req
    spec: GrammarSpec
    backend: GrammarBackend
    future: cf.Future
    since: float


class GrammarManager:
    """Owns the compile thread pool, the compiled-grammar cache (by spec, LRU) and the requests
    in the "grammar pending" state. Invariant: a request handed to `admit` is pending here until
    `collect` returns it, ready (`req.grammar` set) or failed (`req.error` set), or `abort` drops it.
    Nothing here blocks the caller except `wait`, which it asks for."""

    def __init__(
        self, router: GrammarRouter, vocab_size: int, timeout_s: float = limits.COMPILE_TIMEOUT_S, workers: int = 2
    ) -> None:
        self.router, self.vocab_size, self.timeout_s, self.workers = router, vocab_size, timeout_s, workers
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="radixlm-grammar")
        self._compiled: OrderedDict[GrammarSpec, cf.Future] = OrderedDict()
        self._pending: list[_Pending] = []
        self._failed: list[Req] = []
        self._closer_ids: Optional[list[int]] = None

    def admit(self, req: Req) -> bool:
        """Start compiling `req`'s grammar; False (and nothing done) when it has no constraint."""
        spec = GrammarSpec.from_params(req.params)
        if spec is None:
            return False
        try:
            backend = self.router.resolve(spec)
        except ValueError as exc:
            req.error = str(exc)
            self._failed.append(req)
            return True
        self._pending.append(_Pending(req, spec, backend, self._future(spec, backend), time.monotonic()))
        return True

    def _future(self, spec: GrammarSpec, backend: GrammarBackend) -> cf.Future:
        future = self._compiled.get(spec)
        if future is None:
            future = self._pool.submit(self._compile, spec, backend)
            self._compiled[spec] = future
            while len(self._compiled) > COMPILED_CACHE_SIZE:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(spec)
        return future

    def _compile(self, spec: GrammarSpec, backend: GrammarBackend) -> tuple[GrammarBackend, Any]:
        """Runs on a pool thread. Also refuses grammars that admit no output at all."""
        compiled = backend.compile(spec)
        probe = backend.new_grammar(compiled)
        bitmask = torch.zeros((1, (self.vocab_size + 31) // 32), dtype=torch.int32)
        probe.fill_vocab_mask(bitmask, 0)
        if not bool(bitmask.any()):
            raise ValueError(f"the {spec.describe()} admits no output")
        return backend, compiled

    def collect(self) -> tuple[list[Req], list[Req]]:
        """Requests whose grammar is ready (with `req.grammar` set) and those that failed
        (`req.error` names why: a bad spec, or a compile past the time bound)."""
        ready, failed = [], self._failed
        self._failed, still, now = [], [], time.monotonic()
        for item in self._pending:
            if item.future.cancelled():
                still.append(item)  # its pool was abandoned: resubmitted below
            elif item.future.done():
                self._finish(item, ready, failed)
            elif now - item.since > self.timeout_s:
                item.req.error = f"compiling the {item.spec.describe()} took longer than {self.timeout_s:g} s"
                failed.append(item.req)
                self._abandon_stuck_pool()
                self._compiled[item.spec] = _failed_future(ValueError(item.req.error))  # refuse repeats at once
            else:
                still.append(item)
        self._pending = still
        for item in still:
            if item.future.cancelled():  # queued on a pool abandoned above: compile on the new one
                self._compiled.pop(item.spec, None)
                item.future = self._future(item.spec, item.backend)
        return ready, failed

    def _finish(self, item: _Pending, ready: list[Req], failed: list[Req]) -> None:
        try:
            backend, compiled = item.future.result()
        except Exception as exc:  # a backend failure must fail this request, not the scheduler
            item.req.error = str(exc) if isinstance(exc, ValueError) else f"grammar compile failed: {exc!r}"
            failed.append(item.req)
            return
        grammar = backend.new_grammar(compiled)
        params = item.req.params
        grammar = grammar if params.reasoning_gate is None else GatedGrammar(grammar, params.reasoning_gate)
        if params.json_schema_max_tokens_close:
            grammar = ClosingGrammar(grammar, params.max_new_tokens, self._closers())
        item.req.grammar = grammar
        ready.append(item.req)

    def _closers(self) -> list[int]:
        """The tokens a budget-closing completion is built from (computed once)."""
        if self._closer_ids is None:
            tokenizer, _, eos_ids = self.router.tokenizer_args
            self._closer_ids = closer_tokens(tokenizer, eos_ids)
        return self._closer_ids

    def _abandon_stuck_pool(self) -> None:
        """A compile thread cannot be interrupted: leave it running and compile the rest on a
        fresh pool, so one hostile spec does not hold up everyone else's."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="radixlm-grammar")

    def abort(self, rid: str) -> Optional[Req]:
        """Drop a pending request; returns it (or None when it is not pending here)."""
        for i, item in enumerate(self._pending):
            if item.req.rid == rid:
                return self._pending.pop(i).req
        return None

    def num_pending(self) -> int:
        return len(self._pending) + len(self._failed)

    def pending_reqs(self) -> list[Req]:
        """The requests waiting here (compiling or failed, not yet collected)."""
        return [item.req for item in self._pending] + list(self._failed)

    def wait(self, timeout: float) -> None:
        """Block until some compile finishes or `timeout` seconds pass (the loop is otherwise idle)."""
        if self._pending:
            cf.wait([item.future for item in self._pending], timeout, return_when=cf.FIRST_COMPLETED)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _failed_future(exc: Exception) -> cf.Future:
    future: cf.Future = cf.Future()
    future.set_exception(exc)
    return future
