"""Sampling a batch's next tokens on the device, reading them back into the requests, and
recording logprobs.

Sampling is split in two so the scheduler can overlap host work with the device: `launch`
queues the sampling and appends a placeholder per request, `finish` (possibly after the next
batch was launched) reads the ids and does everything that needs their values. When a
constrained request's previous token is still a placeholder, its grammar cannot fill the mask
yet: `launch` then queues only the forward, and `complete` queues the sampling once the previous
batch is finished (the host fills the masks while the device runs the forward)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from radixlm.constrained.structured import StructuredOutput
from radixlm.forward.device_copy import to_device_split
from radixlm.ipc.finish import FinishLength
from radixlm.sampling.sampler import apply_penalties_and_bias, sample
from radixlm.sampling.sampling_batch import SamplingBatch
from radixlm.scheduler.batch import ScheduledBatch
from radixlm.scheduler.host_copy import make_host_copy
from radixlm.scheduler.request import Req
from radixlm.scheduler.text_tracker import TextTracker

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
    deferred: Optional[Callable[[], None]] = None  # queues the sampling (see TokenSampler.complete)


class TokenSampler:
    """Logprobs are those of the model's raw distribution (log-softmax of the logits, before
    penalties and temperature). Each appended token goes through `text.check_finish`, which
    decides whether it ends its request."""

    def __init__(
        self, text: TextTracker, structured: StructuredOutput, vocab_size: int, eos_ids: set[int], device: torch.device
    ) -> None:
        self.text, self.structured = text, structured
        self.vocab_size, self.eos_ids, self.device = vocab_size, eos_ids, device
        self.host_copy = make_host_copy(device)

    def launch(self, batch: ScheduledBatch, logits: torch.Tensor, token_buf: torch.Tensor) -> LaunchedBatch:
        """Sample on the device for every item that samples, without waiting for the result:
        the ids go to `token_buf[req_pool_idx]` (where the next decode reads its input) and
        start their copy to the host; each sampling request gets a placeholder token. When a
        constrained taker's newest token is a placeholder (its grammar lags one token), nothing
        is sampled yet: the batch is returned with `deferred` set, for `complete`."""
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
        launched = LaunchedBatch(batch, logits, reqs, raw, _not_sampled)
        sample = functools.partial(self._sample_into, launched, pool_idx, token_buf)
        if any([r.grammar is not None and r.pending_tokens for r in reqs]):
            launched.deferred = sample
        else:
            sample()
        return launched

    def complete(self, launched: LaunchedBatch) -> None:
        """Queue the sampling `launch` deferred. Call it once the batch before `launched` is
        finished (every grammar has accepted every earlier token) and before anything reads
        `launched.next_ids`; a request that finished meanwhile gets no placeholder."""
        deferred, launched.deferred = launched.deferred, None
        if deferred is not None:
            deferred()

    def _sample_into(self, launched: LaunchedBatch, pool_idx: torch.Tensor, token_buf: torch.Tensor) -> None:
        ids = self._sample(launched.takers, launched.raw)
        token_buf[pool_idx] = ids
        for req in launched.takers:
            if req.params.max_new_tokens > 0 and req.finished_reason is None:
                req.output_ids.append(PLACEHOLDER)
                req.pending_tokens += 1
        launched.next_ids = self.host_copy(ids)

    def finish(self, launched: LaunchedBatch, next_ids: list[int]) -> list[Req]:
        """Append the sampled ids (`launched.next_ids()`, replacing placeholders), record logprobs
        and set finish reasons. Returns the batch's requests that had not finished before: a
        request that finished while this batch ran (overlap) is skipped, its token dropped."""
        batch = launched.batch
        live = [req for req in batch.reqs if req.finished_reason is None]
        for item, rows in zip(batch.items, batch.logit_rows):
            if item.logit_positions and not item.req.finished:
                _prompt_logprobs(item.req, item.logit_positions, rows, launched.logits)
        takers = launched.takers
        want_lp = any([r.return_logprob for r in takers]) and any(
            r.return_logprob and r.finished_reason is None for r in takers
        )
        logprobs = torch.log_softmax(launched.raw, dim=-1) if want_lp else None
        check_finish = self.text.check_finish
        for i, (req, token) in enumerate(zip(takers, next_ids)):
            if req.finished_reason is not None:
                continue
            if req.params.max_new_tokens == 0:  # prefill only (e.g. prompt logprobs): keep no token
                req.finished_reason = FinishLength(0)
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
                _output_logprob(req, lp, token)
            elif lp is not None:
                req.logprobs.output_token_logprobs.append((None, token))
                req.logprobs.output_top_logprobs.append(None)
            req.output_ids.append(token)
            self.text.check_finish(req, token, len(req.output_ids))
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


def _not_sampled() -> list[int]:
    raise RuntimeError("the batch's sampling was deferred and is not queued yet (TokenSampler.complete)")


def _prompt_logprobs(req: Req, positions: list[int], rows: dict[int, int], logits: torch.Tensor) -> None:
    """Record the logprob of each prompt token after `positions` (read from their logits rows)."""
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


def _output_logprob(req: Req, lp: torch.Tensor, token: int) -> None:
    req.logprobs.output_token_logprobs.append((float(lp[token]), token))
    req.logprobs.output_top_logprobs.extend(_top_k(lp[None], req.top_logprobs_num))


def _plain_greedy(req: Req) -> bool:
    """Greedy with nothing that changes the logits: the argmax of the raw logits is the answer."""
    return req.plain_greedy and len(req.output_ids) >= req.params.min_new_tokens


def _top_k(lp: torch.Tensor, k: int) -> list[list[tuple[float, int]]]:
    if k <= 0:
        return [[] for _ in range(lp.shape[0])]
    values, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return [list(zip(v, i)) for v, i in zip(values.tolist(), ids.tolist())]
