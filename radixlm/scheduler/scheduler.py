"""The scheduler: receive requests -> pick the next batch -> run it -> process results."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch

from radixlm.executor.model_runner import ModelRunner
from radixlm.forward.batch import ForwardMode
from radixlm.ipc.finish import BAD_REQUEST, UNAVAILABLE, FinishAbort
from radixlm.ipc.messages import AbortReq, ReqOutput, RpcOutput, RpcReq, TokenizedGenerateReq
from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.scheduler.batch import ScheduledBatch, build_decode, build_extend, build_multi_token_decode
from radixlm.scheduler.grammar_queue import GrammarManager
from radixlm.scheduler.lora_control import LoraControl, no_lora
from radixlm.scheduler.output import OutputBuilder
from radixlm.scheduler.prefill import PrefillAdder, PrefillBudget, order_waiting
from radixlm.scheduler.request import Req
from radixlm.scheduler.step_timer import StepTimer
from radixlm.scheduler.text_tracker import TextTracker
from radixlm.scheduler.token_sampler import LaunchedBatch, TokenSampler

logger = logging.getLogger(__name__)

INIT_NEW_TOKEN_RATIO, MIN_NEW_TOKEN_RATIO, RATIO_DECAY = 0.7, 0.1, 0.001
GRAMMAR_POLL_S = 0.005  # how long an otherwise idle step waits for a grammar compile


class Scheduler:
    """Continuous batching over one model runner. Prefill has priority; otherwise every running
    request decodes one token per step. When decode runs out of KV, the newest requests are
    retracted (their KV handed to the tree, themselves requeued) instead of failing.

    A step is made of `begin_step`, `next_batch`, `run_batch`, `process_results` and `end_step`;
    `scheduler.loop` composes them into the plain and the overlapped loop (`overlap`). At most
    one launched batch is `inflight` (its results not processed yet); anything that needs every
    result on the host (an abort, an RPC) processes it first.

    In embedding mode `sampler` is a `scheduler.pooler.EmbeddingPooler` (same contract) and the
    runner returns hidden states: every request is prefill-only (`max_new_tokens` 0)."""

    def __init__(
        self,
        runner: ModelRunner,
        cache: KVCacheManager,
        text: TextTracker,
        sampler: TokenSampler,
        outputs: OutputBuilder,
        max_running: int,
        max_prefill_tokens: int,
        chunk_size: Optional[int],
        policy: str,
        grammars: GrammarManager,
        overlap: bool = True,
        full_prefill: bool = False,
        spec: Optional[Any] = None,
    ) -> None:
        self.runner, self.cache, self.grammars = runner, cache, grammars
        self.text, self.sampler, self.outputs = text, sampler, outputs
        self.max_running, self.max_prefill_tokens = max_running, max_prefill_tokens
        self.chunk_size, self.policy = chunk_size, policy
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked: Optional[Req] = None
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        self.num_retracted = 0
        self.num_forward_steps = 0
        self.pending: list[ReqOutput] = []
        self.timer = StepTimer()
        self.overlap = overlap
        self.spec = spec  # radixlm.speculative.decoder.SpecDecoder: decode steps verify drafts
        self.full_prefill = full_prefill  # embedding mode with mean / CLS pooling: never reuse a cached prefix
        self.num_overlapped_steps = 0  # batches launched before the previous one was finished
        self.num_deferred_samplings = 0  # of those, batches sampled only once it was (grammars)
        self.inflight: Optional[LaunchedBatch] = None
        self.token_buf = torch.zeros(cache.req_pool.table.shape[0], dtype=torch.int64, device=runner.device)
        self.rpc_handlers: dict[str, Callable[..., Any]] = {
            "flush_cache": self.cache.flush,
            "get_info": self.info,
            "check_leak": self.check_leak,
        }
        self.lora_uid: Callable[[Optional[str]], int] = no_lora
        if runner.lora is not None:
            control = LoraControl(runner.lora, self._live_reqs, runner.tp.size)
            self.lora_uid = control.uid_for
            self.rpc_handlers.update(load_lora_adapter=control.load, unload_lora_adapter=control.unload)

    # -- intake ------------------------------------------------------------------
    def handle(self, msg: Any) -> Optional[RpcOutput]:
        """Apply one message from the front; returns the answer for RPCs."""
        if isinstance(msg, TokenizedGenerateReq):
            self._add_request(msg)
        elif isinstance(msg, AbortReq):
            self._finish_inflight()
            self.abort(msg.rid)
        elif isinstance(msg, RpcReq):
            self._finish_inflight()
            handler = self.rpc_handlers.get(msg.method)
            if handler is None:
                return RpcOutput(msg.call_id, error=f"unknown method {msg.method!r}")
            try:
                return RpcOutput(msg.call_id, result=handler(**msg.kwargs))
            except ValueError as exc:  # a refused control call (e.g. a bad adapter): the caller's error
                return RpcOutput(msg.call_id, error=str(exc))
        return None

    def _add_request(self, msg: TokenizedGenerateReq) -> None:
        """Queue `msg` (or hand it to the grammar queue first). `msg` has passed
        `radixlm.ipc.validation.validate_request` in the front: it is not checked again here."""
        req = Req(
            msg.rid,
            msg.input_ids,
            msg.params,
            stream=msg.stream,
            return_logprob=msg.return_logprob,
            logprob_start_len=msg.logprob_start_len,
            top_logprobs_num=msg.top_logprobs_num,
            prefix_group=msg.prefix_group,
            embed_dimensions=msg.embed_dimensions,
            full_prefill=self.full_prefill,
            images=msg.images,
        )
        self.text.init_req(req)
        try:
            req.use_adapter(self.lora_uid(msg.lora_name))
        except ValueError as exc:  # unloaded since the front checked the name
            req.finished_reason = FinishAbort(str(exc), BAD_REQUEST)
            self.pending.append(self.outputs.final_output(req))
            return
        if self.grammars.admit(req):
            return  # "grammar pending" until its grammar is compiled (see _take_compiled)
        self.waiting.append(req)

    def _live_reqs(self) -> list[Req]:
        """Every request not finished: queued, compiling its grammar, chunked or running."""
        chunked = [self.chunked] if self.chunked is not None else []
        return self.waiting + self.running + chunked + self.grammars.pending_reqs()

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
        req.finished_reason = FinishAbort("aborted")
        if req.req_pool_idx is not None or req.last_node is not None:
            self.cache.cache_finished(req)
        self.pending.append(self.outputs.final_output(req))

    # -- one step -------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(
            self.waiting or self.running or self.chunked or self.grammars.num_pending() or self.inflight is not None
        )

    def begin_step(self) -> None:
        """Start timing a step; requests whose grammar compiled join the waiting queue."""
        self.timer.start()
        self._take_compiled()

    def next_batch(self, need: Optional[int] = None) -> Optional[ScheduledBatch]:
        """Prefill first, else decode; None when there is nothing to run (then, if only grammar
        compiles are pending, it waits a little instead of spinning). `need`: the running
        requests' decode KV need when computed since the last finished batch (`overlap_need`)."""
        batch = self._prefill_batch()
        if batch is None:
            batch = self._decode_batch(need)
        if batch is None and self.inflight is None and self.grammars.num_pending():
            self.grammars.wait(GRAMMAR_POLL_S)
        return batch

    def run_batch(self, batch: Optional[ScheduledBatch]) -> Optional[LaunchedBatch]:
        """Launch the forward and the sampling of `batch` without waiting for the device."""
        if batch is None:
            return None
        self.num_forward_steps += 1
        self.timer.mark("schedule")
        logits = self.runner.forward(batch.forward)
        launched = self.sampler.launch(batch, logits, self.token_buf)
        if batch.mode is ForwardMode.EXTEND:  # prefilled prompts are shareable from now on
            for item in batch.items:
                self.cache.cache_unfinished(item.req)
                if item.sample and item.req.params.max_new_tokens > 0:
                    self.running.append(item.req)
        self.timer.mark("launch")
        return launched

    def complete_launch(self, launched: Optional[LaunchedBatch]) -> None:
        """Queue the sampling `run_batch` deferred for `launched` (constrained requests whose
        grammar lagged one token: `TokenSampler.complete`), once the batch before it is processed;
        nothing to do for a batch sampled at launch."""
        if launched is not None and launched.deferred is not None:
            self.sampler.complete(launched)
            self.num_deferred_samplings += 1
            self.timer.mark("launch")

    def swap_inflight(self, launched: Optional[LaunchedBatch]) -> Optional[LaunchedBatch]:
        """Make `launched` the batch in flight; returns the previous one, whose results are still
        to be processed (counted as an overlapped step when both exist)."""
        previous, self.inflight = self.inflight, launched
        if launched is not None and previous is not None:
            self.num_overlapped_steps += 1
        return previous

    def process_results(self, launched: Optional[LaunchedBatch]) -> None:
        """Read the launched batch's tokens, set finish reasons, free the finished requests and
        queue the outputs to send."""
        if launched is None:
            return
        self.timer.mark("schedule")
        next_ids = launched.next_ids()
        self.timer.mark("device_wait")
        live = self.sampler.finish(launched, next_ids)
        done = [req for req in live if req.finished_reason is not None]
        for req in done:
            self.cache.cache_finished(req)
        if done:  # one pass over `running`, not a search per finished request
            gone = {id(req) for req in done}
            self.running = [req for req in self.running if id(req) not in gone]
        # make_output has nothing to say about a running request that does not stream
        speaking = [req for req in live if req.stream or req.finished_reason is not None]
        self.pending.extend(out for out in map(self.outputs.make_output, speaking) if out is not None)
        self.timer.mark("process")

    def end_step(self, batch: Optional[ScheduledBatch]) -> list[ReqOutput]:
        """Close the step's timing (by the kind of `batch`); returns the outputs to send."""
        self.timer.mark("schedule")
        self.timer.finish(
            batch.forward.mode.name.lower() if batch is not None else "idle",
            len(batch.reqs) if batch is not None else 0,
        )
        out, self.pending = self.pending, []
        return out

    def _finish_inflight(self) -> None:
        """Process the results of the batch in flight, if any (before anything that needs them)."""
        self.process_results(self.swap_inflight(None))

    def overlap_need(self) -> Optional[int]:
        """When the next batch can be built before the batch in flight is finished: the running
        requests' decode KV need (`_decode_need`, valid for this step's decode batch as long as
        no batch is finished before it), else None (also when no batch is in flight)."""
        lag_safe = _lag_safe_with_grammar if self.sampler.structured.can_lag else _lag_safe
        if self.inflight is None or not all(map(lag_safe, self.running)):
            return None
        need = self._decode_need()
        return need if need <= self.cache.available() else None

    def _take_compiled(self) -> None:
        """Requests whose grammar is ready join the waiting queue; failed compiles are refused (400)."""
        ready, failed = self.grammars.collect()
        self.waiting.extend(ready)
        for req in failed:
            req.finished_reason = FinishAbort(req.error, BAD_REQUEST)
            self.pending.append(self.outputs.final_output(req))

    def _prefill_batch(self) -> Optional[ScheduledBatch]:
        if not self.waiting and self.chunked is None:
            return None
        reserved = sum(int((r.params.max_new_tokens - len(r.output_ids)) * self.new_token_ratio) for r in self.running)
        lora = self.runner.lora
        budget = PrefillBudget(
            self.max_prefill_tokens,
            self.chunk_size,
            self.max_running,
            reserved,
            self.new_token_ratio,
            lora.max_loras if lora is not None else 0,
        )
        adapters = frozenset(r.lora_uid for r in self.running if r.lora_uid)
        adder = PrefillAdder(self.cache, budget, len(self.running), adapters)
        if self.chunked is not None:
            chunked, self.chunked = self.chunked, None
            adder.add(chunked)
            if adder.chunked is None and not any(i.req is chunked for i in adder.items):
                self.chunked = chunked  # could not extend it this step (no memory)
        if adder.chunked is None and self.chunked is None:
            # Not while a half-done chunked request is waiting for memory: a newcomer chunked in
            # its place would overwrite `self.chunked` and lose it (and its locked KV).
            for req in order_waiting(self.waiting, self.policy, self.cache):
                if not adder.add(req):
                    break
        self.chunked = adder.chunked or self.chunked
        admitted = {id(i.req) for i in adder.items}
        self.waiting = [r for r in self.waiting if id(r) not in admitted]
        if not adder.items:
            return None
        self.cache.write_rows(adder.table_spans)
        return build_extend(adder.items, self.cache.req_pool.table, self.runner.device)

    def _decode_batch(self, need: Optional[int]) -> Optional[ScheduledBatch]:
        if not self.running:
            return None
        self._ensure_decode_memory(self._decode_need() if need is None else need)
        if not self.running:
            return None
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - RATIO_DECAY)
        reqs = [r for r in self.running if not self._surely_done(r)]
        if not reqs:
            return None  # every running request ends with the batch in flight
        if self.spec is not None:
            verify = self.spec.decode_batch(reqs)
            if verify is not None:
                return verify
        if any([r.prompt_len + len(r.output_ids) - r.kv_len > 1 for r in reqs]):  # seq_len - kv_len
            return self._multi_token_decode(reqs)
        slots = self.cache.alloc_decode(reqs)
        batch = build_decode(reqs, slots, self.cache.req_pool.table, self.runner.device, self.token_buf)
        fb = batch.forward
        self.cache.write_slots(fb.req_pool_indices, fb.positions, fb.out_cache_loc)
        return batch

    def _surely_done(self, req: Req) -> bool:
        """A request whose placeholder token will end it by length: no need to decode it again."""
        return req.pending_tokens > 0 and (
            len(req.output_ids) >= req.params.max_new_tokens
            or req.prompt_len + len(req.output_ids) >= self.runner.context_len
        )

    def _multi_token_decode(self, reqs: list[Req]) -> ScheduledBatch:
        """Some running requests got several tokens at once (jump-forward): give every request
        slots for all its tokens without KV and run them in one step."""
        starts = [r.kv_len for r in reqs]
        for req in reqs:
            if self.cache.alloc_tokens(req, req.seq_len - req.kv_len) is None:
                raise RuntimeError("KV pool exhausted during decode despite retraction")
        return build_multi_token_decode(reqs, starts, self.cache.req_pool.table, self.runner.device)

    def _ensure_decode_memory(self, need: int) -> None:
        """Retract the newest requests until every remaining one can get its next slot (`need`:
        `_decode_need()` now). When a lone request still cannot, a half-done chunked prefill is
        holding the KV: retract that one (its computed prefix stays cached). Failing that (the
        front refuses requests larger than the pool) the lone request is aborted: never a crash."""
        page = self.cache.page_size
        while need > self.cache.available():
            if len(self.running) > 1:
                req = self.running.pop()
                need -= _new_pages(req, page) * page
                self._retract(req)
            elif self.chunked is not None:
                chunked, self.chunked = self.chunked, None
                self._retract(chunked)
            else:
                self._abort_starved()
                return

    def _decode_need(self) -> int:
        """KV slots the running requests need for their next decode step."""
        page = self.cache.page_size
        if page == 1:
            return sum([r.prompt_len + len(r.output_ids) - r.kv_len for r in self.running])  # sum of seq_len - kv_len
        return sum(_new_pages(r, page) for r in self.running) * page

    def _retract(self, req: Req) -> None:
        """Give `req`'s KV to the tree (unlocked, so evictable) and requeue it first in line."""
        self.cache.cache_finished(req)
        req.num_retractions += 1
        self.num_retracted += 1
        self.waiting.insert(0, req)
        self.new_token_ratio = min(1.0, self.new_token_ratio + 0.1)
        logger.info("retracted request %s (KV pool full)", req.rid)

    def _abort_starved(self) -> None:
        req = self.running.pop()
        logger.warning("aborted request %s: the KV pool has no slot for its next token", req.rid)
        req.finished_reason = FinishAbort("the KV pool is exhausted; request aborted", UNAVAILABLE)
        self.cache.cache_finished(req)
        self.pending.append(self.outputs.final_output(req))

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
            "num_overlapped_steps": self.num_overlapped_steps,
            "num_deferred_samplings": self.num_deferred_samplings,
            "num_grammar_pending_reqs": self.grammars.num_pending(),
            "grammar_seconds": self.sampler.structured.seconds,
            "grammar_masked_steps": self.sampler.structured.masked_steps,
            "step_times": self.timer.summary(),
            "context_length": self.runner.context_len,
            "vocab_size": self.runner.vocab_size,
            "quantization": self.runner.quantization,
            "weight_bytes": self.runner.weight_bytes,
            **(self.spec.info() if self.spec is not None else {}),
            "lora_adapters": self.runner.lora.names() if self.runner.lora is not None else None,
        }

    def check_leak(self) -> bool:
        if self.has_work():
            raise RuntimeError("check_leak called while requests are in flight")
        self.cache.check_no_leak()
        if self.spec is not None:
            self.spec.check_leak()
        return True


def _new_pages(req: Req, page: int) -> int:
    """Pages `req` needs for its tokens without KV (one token in a plain decode)."""
    return -(-req.seq_len // page) - -(-req.kv_len // page)


def _lag_safe(req: Req) -> bool:
    """Can this request's next token be sampled before its previous one is read on the host?"""
    return req.grammar is None and not req.uses_penalties


def _lag_safe_with_grammar(req: Req) -> bool:
    """Can this request's next forward be launched before its previous token is read on the
    host? A constrained request's sampling then waits for its grammar (`complete_launch`)."""
    return not req.uses_penalties
