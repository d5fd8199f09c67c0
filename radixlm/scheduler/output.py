"""After a forward: sample next tokens, record logprobs, detokenize, and decide who finished."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from radixlm.constrained.structured import StructuredOutput, build_structured_output
from radixlm.forward.device_copy import to_device_split
from radixlm.ipc.messages import ReqOutput
from radixlm.sampling.sampler import apply_penalties_and_bias, sample
from radixlm.sampling.sampling_batch import SamplingBatch
from radixlm.scheduler.batch import ScheduledBatch
from radixlm.scheduler.host_copy import make_host_copy
from radixlm.scheduler.request import Req
from radixlm.tokenizer.detokenizer import IncrementalDetokenizer, StopStringMatcher, WindowDecoder

PLACEHOLDER = -1  # an output id sampled on the device whose value the host has not read yet


@dataclass
class LaunchedBatch:
    """A batch whose forward and sampling are queued: `next_ids()` waits for the sampled ids.
    `raw` are the logits of the sampled rows (row k: `takers[k]`); they are read after the launch
    (logprobs) only when some taker returns logprobs, and then they are not shared with a later batch."""

    batch: ScheduledBatch
    logits: torch.Tensor
    takers: list[Req]
    raw: Optional[torch.Tensor]
    next_ids: Callable[[], list[int]]


class OutputProcessor:
    """Owns the per-request text state. Logprobs are those of the model's raw distribution
    (log-softmax of the logits, before penalties and temperature).

    Sampling is split in two so the scheduler can overlap host work with the device: `launch`
    queues the sampling and appends a placeholder per request, `finish` (possibly after the
    next batch was launched) reads the ids and does everything that needs their values."""

    def __init__(
        self,
        tokenizer: Any,
        eos_ids: set[int],
        vocab_size: int,
        context_len: int,
        device: torch.device,
        structured: Optional[StructuredOutput] = None,
    ) -> None:
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.vocab_size, self.context_len, self.device = vocab_size, context_len, device
        self.structured = structured or build_structured_output(tokenizer, vocab_size, eos_ids, jump_forward=False)
        self.host_copy = make_host_copy(device)
        self._decoders: dict[tuple[bool, bool], WindowDecoder] = {}  # per detokenizer options, shared

    def init_req(self, req: Req) -> None:
        """Text bookkeeping for `req`: an incremental detokenizer when the request needs text while
        it runs (streaming, or stop strings to match); otherwise its text is decoded once when it
        finishes, which gives the same text (the detokenizer's invariant) without a decode call per
        token on the scheduler's critical path."""
        p = req.params
        stops = p.stop if isinstance(p.stop, list) else ([p.stop] if p.stop else [])
        req.stop_matcher = StopStringMatcher(stops)
        if self.tokenizer is not None:
            options = (p.skip_special_tokens, p.spaces_between_special_tokens)
            decoder = self._decoders.get(options)
            if decoder is None:
                decoder = self._decoders[options] = WindowDecoder(self.tokenizer, *options)
            if req.stream or req.stop_matcher.stops:
                req.detok = IncrementalDetokenizer(self.tokenizer, *options, decoder=decoder)
            else:
                req.final_decoder = decoder

    def launch(self, batch: ScheduledBatch, logits: torch.Tensor, token_buf: torch.Tensor) -> "LaunchedBatch":
        """Sample on the device for every item that samples, without waiting for the result:
        the ids go to `token_buf[req_pool_idx]` (where the next decode reads its input) and
        start their copy to the host; each sampling request gets a placeholder token."""
        reqs = batch.samplers
        if not reqs:
            return LaunchedBatch(batch, logits, reqs, None, list)
        if batch.sample_rows is None:  # row i is request i: no gather, and the table rows are on the device
            # A CUDA graph's logits are its output buffer, which the next batch overwrites: logprobs
            # (read in `finish`, maybe after the next launch) need their own copy.
            raw = logits.clone() if any([r.return_logprob for r in reqs]) else logits
            pool_idx = batch.forward.req_pool_indices
        else:
            k = len(reqs)  # logits rows and table rows in one copy (logits and token_buf share a device)
            rows, pool_idx = to_device_split(
                batch.sample_rows + [r.req_pool_idx for r in reqs], (k, k), token_buf.device
            )
            raw = logits[rows]
        ids = self._sample(reqs, raw)
        token_buf[pool_idx] = ids
        for req in reqs:
            if req.params.max_new_tokens > 0:
                req.output_ids.append(PLACEHOLDER)
                req.pending_tokens += 1
        return LaunchedBatch(batch, logits, reqs, raw, self.host_copy(ids))

    def finish(self, launched: "LaunchedBatch", next_ids: list[int]) -> list[Req]:
        """Append the sampled ids (`launched.next_ids()`, replacing placeholders), record logprobs
        and set finish reasons. Returns the batch's requests that had not finished before: a
        request that finished while this batch ran (overlap) is skipped, its token dropped."""
        batch = launched.batch
        live = [req for req in batch.reqs if req.finished_reason is None]
        for item, rows in zip(batch.items, batch.logit_rows):
            if item.logit_positions and not item.req.finished:
                self._prompt_logprobs(item.req, item.logit_positions, rows, launched.logits)
        takers = launched.takers
        want_lp = any([r.return_logprob for r in takers]) and any(
            r.return_logprob and r.finished_reason is None for r in takers
        )
        logprobs = torch.log_softmax(launched.raw, dim=-1) if want_lp else None
        check_finish = self._check_finish
        for i, (req, token) in enumerate(zip(takers, next_ids)):
            if req.finished_reason is not None:
                continue
            if req.params.max_new_tokens == 0:  # prefill only (e.g. prompt logprobs): keep no token
                req.finished_reason = {"type": "length", "length": 0}
            elif req.grammar is None and req.pending_tokens and not (want_lp and req.return_logprob):
                # The common case, what `_append_sampled` does but in place: the oldest placeholder
                # becomes `token`; the later ones are dropped if that finishes the request.
                out = req.output_ids
                n = len(out) - req.pending_tokens + 1  # output tokens known once `token` is in
                out[n - 1] = token
                req.pending_tokens -= 1
                check_finish(req, token, n)
                if req.finished_reason is not None and req.pending_tokens:
                    del out[n:]
                    req.pending_tokens = 0
            else:
                self._append_sampled(req, token, logprobs[i] if want_lp and req.return_logprob else None)
        return live

    def _append_sampled(self, req: Req, token: int, lp: Optional[torch.Tensor]) -> None:
        """Replace the request's oldest placeholder by `token` and what its grammar forces after it."""
        later = req.pending_tokens - 1  # placeholders of batches launched after this one
        del req.output_ids[len(req.output_ids) - req.pending_tokens :]
        req.pending_tokens = 0
        tokens = self.structured.advance(req, token)
        self._append_all(req, tokens, lp)
        if not req.finished and later > 0:
            req.output_ids.extend([PLACEHOLDER] * later)
            req.pending_tokens = later

    def _append_all(self, req: Req, tokens: list[int], lp: Optional[torch.Tensor]) -> None:
        """Append the sampled token and any jump-forward tokens after it (forced tokens have no
        logprob: they were not sampled), stopping as soon as the request finishes."""
        for k, token in enumerate(tokens):
            if lp is not None and k == 0:
                self._output_logprob(req, lp, token)
            elif lp is not None:
                req.logprobs.output_token_logprobs.append((None, token))
                req.logprobs.output_top_logprobs.append(None)
            self._append(req, token)
            if req.finished:
                return

    def _sample(self, reqs: list[Req], raw: torch.Tensor) -> torch.Tensor:
        raw = self.structured.mask_logits(reqs, raw)
        if all(map(_plain_greedy, reqs)):
            return raw.argmax(dim=-1)  # skip building per-row sampling tensors
        sb = SamplingBatch.build(
            [r.params for r in reqs],
            [r.output_ids for r in reqs],
            self.vocab_size,
            self.eos_ids,
            self.device,
            [r.step_seed() for r in reqs],
        )
        if sb.all_greedy and not (sb.has_penalties or sb.has_logit_bias or sb.has_min_tokens_ban):
            return raw.argmax(dim=-1)
        return sample(apply_penalties_and_bias(raw.clone(), sb), sb)

    def _prompt_logprobs(self, req: Req, positions: list[int], rows: dict[int, int], logits: torch.Tensor) -> None:
        idx = torch.tensor([rows[p] for p in positions], device=logits.device)
        lp = torch.log_softmax(logits[idx], dim=-1)
        targets = torch.tensor([req.origin_input_ids[p + 1] for p in positions], device=logits.device)
        chosen = lp.gather(1, targets[:, None]).squeeze(1).tolist()
        state = req.logprobs
        if not state.input_token_logprobs and req.logprob_start_len == 0:
            state.input_token_logprobs.append((None, req.origin_input_ids[0]))
            state.input_top_logprobs.append(None)
        state.input_token_logprobs.extend(zip(chosen, targets.tolist()))
        state.input_top_logprobs.extend(_top_k(lp, req.top_logprobs_num))

    def _output_logprob(self, req: Req, lp: torch.Tensor, token: int) -> None:
        req.logprobs.output_token_logprobs.append((float(lp[token]), token))
        req.logprobs.output_top_logprobs.extend(_top_k(lp[None], req.top_logprobs_num))

    def _append(self, req: Req, token: int) -> None:
        req.output_ids.append(token)
        self._check_finish(req, token, len(req.output_ids))

    def _check_finish(self, req: Req, token: int, n: int) -> None:
        """Detokenize `token`, the request's newest output token and its `n`-th, then set the
        finish reason if it ends the request (stop token or string, length, context)."""
        p = req.params
        text_stop = None
        if req.detok is not None:
            delta = req.detok.append([token])
            if req.stop_matcher.stops:  # without stop strings it never stops nor holds text back
                text_stop = req.stop_matcher.feed(delta).stop_index
        if token in (p.stop_token_ids or ()) or (not p.ignore_eos and token in self.eos_ids):
            req.finished_reason = {"type": "stop", "matched": token}
        elif text_stop is not None:
            req.finished_reason = {"type": "stop", "matched": self._matched_stop(req, text_stop)}
        elif n >= p.max_new_tokens:
            req.finished_reason = {"type": "length", "length": p.max_new_tokens}
        elif req.prompt_len + n >= self.context_len:
            req.finished_reason = {"type": "length", "length": n}

    def _matched_stop(self, req: Req, index: int) -> str:
        text = req.detok.text
        return next((s for s in req.stop_matcher.stops if text.startswith(s, index)), "")

    def make_output(self, req: Req) -> Optional[ReqOutput]:
        """The message for `req` this step (None when a non-streaming request is still running)."""
        if not req.finished and not req.stream:
            return None
        text = self._visible_text(req)
        delta_text = text[req.sent_text_len :]
        known = len(req.output_ids) - req.pending_tokens
        new_ids = req.output_ids[req.sent_ids : known]
        req.sent_text_len, req.sent_ids = len(text), known
        return ReqOutput(req.rid, new_ids, delta_text, req.finished_reason, self._meta(req))

    def _visible_text(self, req: Req) -> str:
        if req.detok is None:
            if req.final_decoder is None or not req.finished:
                return ""
            return req.final_decoder.decode(req.output_ids[: len(req.output_ids) - req.pending_tokens])
        if req.finished:
            text = req.detok.text + req.detok.flush()
            check = req.stop_matcher.process(text) if req.stop_matcher.stops else None
            if check is not None and check.stop_index is not None and not req.params.no_stop_trim:
                text = text[: check.stop_index]
            return text
        check = req.stop_matcher.feed("")
        return req.detok.text[: len(req.detok.text) - check.hold_back]

    def _meta(self, req: Req) -> dict:
        meta = {
            "id": req.rid,
            "prompt_tokens": len(req.origin_input_ids),
            "completion_tokens": len(req.output_ids) - req.pending_tokens,
            "cached_tokens": req.cached_tokens,
            "finish_reason": req.finished_reason,
        }
        if req.error:
            meta["error"] = req.error
        if req.grammar is not None:
            meta["jump_forward_tokens"] = req.jump_forward_tokens
        if req.return_logprob:
            lp = req.logprobs
            meta.update(
                input_token_logprobs=lp.input_token_logprobs,
                input_top_logprobs=lp.input_top_logprobs,
                output_token_logprobs=lp.output_token_logprobs,
                output_top_logprobs=lp.output_top_logprobs,
            )
        return meta


def _plain_greedy(req: Req) -> bool:
    """Greedy with nothing that changes the logits: the argmax of the raw logits is the answer."""
    return req.plain_greedy and len(req.output_ids) >= req.params.min_new_tokens


def _top_k(lp: torch.Tensor, k: int) -> list[list[tuple[float, int]]]:
    if k <= 0:
        return [[] for _ in range(lp.shape[0])]
    values, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return [list(zip(v, i)) for v, i in zip(values.tolist(), ids.tolist())]
