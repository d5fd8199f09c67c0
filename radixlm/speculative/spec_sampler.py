"""`SpeculativeSampler`: the scheduler's token sampler when speculation is on. Prefill and plain
decode batches go to the plain `TokenSampler`; a verify batch's rows go through draft acceptance
(`radixlm.speculative.acceptance`), its accepted run is appended token by token under the usual
stop checks, and the KV of every rejected or cut-off token is given back."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from radixlm.forward.batch import ForwardMode
from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.sampling.sampler import apply_vocab_mask
from radixlm.scheduler.request import Req
from radixlm.scheduler.token_sampler import LaunchedBatch, TokenSampler
from radixlm.speculative.acceptance import accept_drafts
from radixlm.speculative.grammar_drafts import verify_masks
from radixlm.speculative.stats import SpecStats
from radixlm.speculative.verify_batch import VerifyBatch


class SpeculativeSampler:
    """`TokenSampler`'s contract (`launch`, `finish`, `structured`). Runs with the plain loop
    only: a verify batch's tokens are decided in `launch`, and `finish` must follow before the
    next batch is built. After `finish`, each request of a verify batch holds KV for exactly
    its tokens but the last (`kv_len == seq_len - 1`, or less after forced jump-forward text).
    `observe`, when given, sees every launched batch right after its forward (EAGLE pairs it
    with the hidden states the model runner handed over)."""

    def __init__(
        self,
        plain: TokenSampler,
        cache: KVCacheManager,
        stats: SpecStats,
        observe: Optional[Callable[[Any], None]] = None,
    ) -> None:
        self.plain, self.cache, self.stats = plain, cache, stats
        self.structured, self.text = plain.structured, plain.text
        self.observe = observe or _ignore

    def launch(self, batch, logits: torch.Tensor, token_buf: torch.Tensor) -> LaunchedBatch:  # noqa: ANN001
        self.observe(batch)
        if not isinstance(batch, VerifyBatch):
            return self.plain.launch(batch, logits, token_buf)
        masked = self._mask(batch, logits)
        tokens = accept_drafts(masked, batch.reqs, batch.drafts, self.plain.vocab_size, self.plain.eos_ids)
        raw = logits if any([r.return_logprob for r in batch.reqs]) else None
        return LaunchedBatch(batch, logits, batch.reqs, raw, lambda: tokens)

    def _mask(self, batch: VerifyBatch, logits: torch.Tensor) -> torch.Tensor:
        """`logits` with every constrained row masked by its grammar state after the drafts before it."""
        filled = verify_masks(batch.reqs, batch.drafts, self.structured.mask)
        if filled is None:
            return logits
        return apply_vocab_mask(logits.clone(), *filled)

    def finish(self, launched: LaunchedBatch, next_ids: list) -> list[Req]:
        batch = launched.batch
        if not isinstance(batch, VerifyBatch):
            live = self.plain.finish(launched, next_ids)
            if batch.mode is ForwardMode.DECODE:
                for req in live:
                    self.stats.record(req, 1, 0)
            return live
        logprobs = torch.log_softmax(launched.raw, dim=-1) if launched.raw is not None else None
        live, row = [], 0
        for req, chain, tokens in zip(batch.reqs, batch.drafts, next_ids):
            if req.finished_reason is None:
                live.append(req)
                lp = logprobs[row : row + len(chain) + 1] if logprobs is not None and req.return_logprob else None
                self._append(req, tokens, lp)
            row += len(chain) + 1
        return live

    def _append(self, req: Req, tokens: list[int], lp: Optional[torch.Tensor]) -> None:
        """Append the accepted run (the drafts kept, then the target's token) until the request
        finishes, then give back the KV past its new length."""
        sampled = len(tokens)  # the model's tokens; a grammar may force more after them
        if req.grammar is not None:
            tokens = self._advance_grammar(req, tokens)
        grammar_end, req.finished_reason = req.finished_reason, None  # the grammar's verdict on the last token
        emitted = 0
        for j, token in enumerate(tokens):
            if lp is not None:
                _record_logprob(req, lp[j] if j < sampled else None, token)
            req.output_ids.append(token)
            emitted += 1
            if j == len(tokens) - 1:
                req.finished_reason = grammar_end  # as the plain sampler: stop checks may override it
            self.text.check_finish(req, token, len(req.output_ids))
            if req.finished_reason is not None:
                break
        self.cache.trim(req, min(req.kv_len, req.seq_len - 1))
        self.stats.record(req, emitted, min(emitted, sampled - 1))

    def _advance_grammar(self, req: Req, tokens: list[int]) -> list[int]:
        """Accept the drafts kept, then the target's token with any text the grammar forces
        after it; shorter when the grammar ends the request on the way (its finish reason set)."""
        stepper = self.structured.stepper
        for j, token in enumerate(tokens[:-1]):
            if not stepper.accept(req, token):
                return tokens[: j + 1]
        return tokens[:-1] + self.structured.advance(req, tokens[-1])


def _ignore(batch: Any) -> None:
    """The observer of a drafter that reads no hidden states."""


def _record_logprob(req: Req, lp: Optional[torch.Tensor], token: int) -> None:
    """The raw-distribution logprob of `token` (None for forced tokens) and its top list."""
    state = req.logprobs
    if lp is None:
        state.output_token_logprobs.append((None, token))
        state.output_top_logprobs.append(None)
        return
    state.output_token_logprobs.append((float(lp[token]), token))
    k = req.top_logprobs_num
    if k <= 0:
        state.output_top_logprobs.append([])
        return
    values, ids = lp.topk(min(k, lp.shape[-1]))
    state.output_top_logprobs.append(list(zip(values.tolist(), ids.tolist())))
