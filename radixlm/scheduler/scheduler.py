"""The scheduler: receive requests -> pick the next batch -> run it -> process results."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from radixlm.constrained.manager import GrammarManager
from radixlm.forward_batch import ForwardMode
from radixlm.io_struct import AbortReq, ReqOutput, RpcOutput, RpcReq, TokenizedGenerateReq
from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.model_runner import ModelRunner
from radixlm.scheduler.batch import ScheduledBatch, build_decode, build_extend, build_multi_token_decode
from radixlm.scheduler.output import OutputProcessor
from radixlm.scheduler.prefill import PrefillAdder, PrefillBudget, order_waiting
from radixlm.scheduler.request import Req

logger = logging.getLogger(__name__)

INIT_NEW_TOKEN_RATIO, MIN_NEW_TOKEN_RATIO, RATIO_DECAY = 0.7, 0.1, 0.001
GRAMMAR_POLL_S = 0.005  # how long an otherwise idle step waits for a grammar compile


class Scheduler:
    """Continuous batching over one model runner. Prefill has priority; otherwise every running
    request decodes one token per step. When decode runs out of KV, the newest requests are
    retracted (their KV handed to the tree, themselves requeued) instead of failing."""

    def __init__(self, runner: ModelRunner, cache: KVCacheManager, outputs: OutputProcessor,
                 max_running: int, max_prefill_tokens: int, chunk_size: Optional[int], policy: str,
                 grammars: GrammarManager) -> None:
        self.runner, self.cache, self.outputs, self.grammars = runner, cache, outputs, grammars
        self.max_running, self.max_prefill_tokens = max_running, max_prefill_tokens
        self.chunk_size, self.policy = chunk_size, policy
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked: Optional[Req] = None
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        self.num_retracted = 0
        self.num_forward_steps = 0
        self.pending: list[ReqOutput] = []
        self.rpc_handlers: dict[str, Callable[[], Any]] = {
            "flush_cache": self.cache.flush, "get_info": self.info, "check_leak": self.check_leak,
        }

    # -- intake ------------------------------------------------------------------
    def handle(self, msg: Any) -> Optional[RpcOutput]:
        """Apply one message from the front; returns the answer for RPCs."""
        if isinstance(msg, TokenizedGenerateReq):
            self._add_request(msg)
        elif isinstance(msg, AbortReq):
            self.abort(msg.rid)
        elif isinstance(msg, RpcReq):
            handler = self.rpc_handlers.get(msg.method)
            if handler is None:
                return RpcOutput(msg.call_id, error=f"unknown method {msg.method!r}")
            return RpcOutput(msg.call_id, result=handler())
        return None

    def _add_request(self, msg: TokenizedGenerateReq) -> None:
        req = Req(msg.rid, msg.input_ids, msg.params, stream=msg.stream, return_logprob=msg.return_logprob,
                  logprob_start_len=msg.logprob_start_len, top_logprobs_num=msg.top_logprobs_num,
                  prefix_group=msg.prefix_group)
        self.outputs.init_req(req)
        error = self._reject_reason(req)
        if error:
            req.error = error
            req.finished_reason = {"type": "abort", "message": error, "status_code": 400}
            self.pending.append(self.outputs.make_output(req))
            return
        if self.grammars.admit(req):
            return  # "grammar pending" until its grammar is compiled (see _take_compiled)
        self.waiting.append(req)

    def _reject_reason(self, req: Req) -> Optional[str]:
        n = len(req.origin_input_ids)
        if n == 0:
            return "the prompt is empty"
        if n >= self.runner.context_len:
            return f"the prompt has {n} tokens, which does not fit the context length {self.runner.context_len}"
        if n + 1 > self.cache.capacity():
            return f"the prompt has {n} tokens, more than the KV pool can ever hold ({self.cache.capacity()})"
        if any(t < 0 or t >= self.runner.vocab_size for t in req.origin_input_ids):
            return f"input token ids must be in [0, {self.runner.vocab_size})"
        return None

    def abort(self, rid: str) -> None:
        """Finish `rid` wherever it is; its KV goes back to the tree / free list."""
        pending = self.grammars.abort(rid)
        if pending is not None:
            self._finish_abort(pending)
        for queue in (self.waiting, self.running):
            for req in list(queue):
                if req.rid == rid:
                    queue.remove(req)
                    self._finish_abort(req)
        if self.chunked is not None and self.chunked.rid == rid:
            req, self.chunked = self.chunked, None
            self._finish_abort(req)

    def _finish_abort(self, req: Req) -> None:
        req.finished_reason = {"type": "abort", "message": "aborted"}
        if req.req_pool_idx is not None or req.last_node is not None:
            self.cache.cache_finished(req)
        self.pending.append(self.outputs.make_output(req) or _final(req))

    # -- one step -------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked or self.grammars.num_pending())

    def step(self) -> list[ReqOutput]:
        """Run at most one batch; returns the outputs to send."""
        self._take_compiled()
        batch = self._next_batch()
        if batch is None and self.grammars.num_pending():
            self.grammars.wait(GRAMMAR_POLL_S)  # idle but for compiles: wait a little, do not spin
        if batch is not None:
            self.num_forward_steps += 1
            logits = self.runner.forward(batch.forward)
            self.outputs.process(batch, logits)
            self._after(batch)
        out, self.pending = self.pending, []
        return out

    def _take_compiled(self) -> None:
        """Requests whose grammar is ready join the waiting queue; failed compiles are refused (400)."""
        ready, failed = self.grammars.collect()
        self.waiting.extend(ready)
        for req in failed:
            req.finished_reason = {"type": "abort", "message": req.error, "status_code": 400}
            self.pending.append(self.outputs.make_output(req))

    def _next_batch(self) -> Optional[ScheduledBatch]:
        batch = self._prefill_batch()
        return batch if batch is not None else self._decode_batch()

    def _prefill_batch(self) -> Optional[ScheduledBatch]:
        if not self.waiting and self.chunked is None:
            return None
        reserved = sum(int((r.params.max_new_tokens - len(r.output_ids)) * self.new_token_ratio)
                       for r in self.running)
        budget = PrefillBudget(self.max_prefill_tokens, self.chunk_size, self.max_running, reserved,
                               self.new_token_ratio)
        adder = PrefillAdder(self.cache, budget, len(self.running))
        if self.chunked is not None:
            chunked, self.chunked = self.chunked, None
            adder.add(chunked)
            if adder.chunked is None and not any(i.req is chunked for i in adder.items):
                self.chunked = chunked  # could not extend it this step (no memory)
        if adder.chunked is None:
            for req in order_waiting(self.waiting, self.policy, self.cache):
                if not adder.add(req):
                    break
        self.chunked = adder.chunked or self.chunked
        admitted = {id(i.req) for i in adder.items}
        self.waiting = [r for r in self.waiting if id(r) not in admitted]
        if not adder.items:
            return None
        for item in adder.items:
            if item.start == item.req.tree_len and not item.req.output_ids and item.req.cached_tokens == 0:
                item.req.cached_tokens = item.start
        return build_extend(adder.items, self.cache.req_pool.table, self.runner.device)

    def _decode_batch(self) -> Optional[ScheduledBatch]:
        if not self.running:
            return None
        self._ensure_decode_memory()
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - RATIO_DECAY)
        if any(r.seq_len - r.kv_len > 1 for r in self.running):
            return self._multi_token_decode()
        self.cache.alloc_decode(self.running)
        return build_decode(self.running, self.cache.req_pool.table, self.runner.device)

    def _multi_token_decode(self) -> ScheduledBatch:
        """Some running requests got several tokens at once (jump-forward): give every request
        slots for all its tokens without KV and run them in one step."""
        starts = [r.kv_len for r in self.running]
        for req in self.running:
            if self.cache.alloc_tokens(req, req.seq_len - req.kv_len) is None:
                raise RuntimeError("KV pool exhausted during decode despite retraction")
        return build_multi_token_decode(self.running, starts, self.cache.req_pool.table, self.runner.device)

    def _ensure_decode_memory(self) -> None:
        """Retract the newest requests until every remaining one can get its next slot."""
        page = self.cache.page_size
        while True:
            need = sum(_new_pages(r, page) for r in self.running) * page
            if need <= self.cache.available() or len(self.running) <= 1:
                return
            req = self.running.pop()
            self.cache.cache_finished(req)
            req.num_retractions += 1
            self.num_retracted += 1
            self.waiting.insert(0, req)
            self.new_token_ratio = min(1.0, self.new_token_ratio + 0.1)
            logger.info("retracted request %s (KV pool full)", req.rid)

    def _after(self, batch: ScheduledBatch) -> None:
        """Cache prefilled prefixes, move requests between queues, free finished ones."""
        for item in batch.items:
            req = item.req
            if req.finished:
                self.cache.cache_finished(req)
                if req in self.running:
                    self.running.remove(req)
            else:
                if batch.mode is ForwardMode.EXTEND:
                    self.cache.cache_unfinished(req)
                    if item.sample:
                        self.running.append(req)
            out = self.outputs.make_output(req)
            if out is not None:
                self.pending.append(out)

    # -- control ---------------------------------------------------------------------
    def info(self) -> dict:
        return {
            "max_total_num_tokens": self.cache.capacity(),
            "available_kv_tokens": self.cache.allocator.available_size(),
            "cached_tokens": self.cache.tree.total_size(),
            "num_running_reqs": len(self.running),
            "num_waiting_reqs": len(self.waiting),
            "num_retracted_reqs": self.num_retracted,
            "num_forward_steps": self.num_forward_steps,
            "num_grammar_pending_reqs": self.grammars.num_pending(),
            "context_length": self.runner.context_len,
            "vocab_size": self.runner.vocab_size,
        }

    def check_leak(self) -> bool:
        if self.has_work():
            raise RuntimeError("check_leak called while requests are in flight")
        self.cache.check_no_leak()
        return True


def _new_pages(req: Req, page: int) -> int:
    """Pages `req` needs for its tokens without KV (one token in a plain decode)."""
    return -(-req.seq_len // page) - -(-req.kv_len // page)

            "grammar_seconds": self.outputs.structured.seconds,
            "grammar_masked_steps": self.outputs.structured.masked_steps,

def _final(req: Req) -> ReqOutput:
    return ReqOutput(req.rid, [], "", req.finished_reason, {"id": req.rid})
