"""A running request's text and its stop decision: incremental detokenization, stop strings,
stop token ids, max tokens and the context length, turned into a finish reason."""

from __future__ import annotations

from typing import Any

from radixlm.ipc.finish import FinishLength, FinishStop
from radixlm.scheduler.request import Req
from radixlm.tokenizer.detokenizer import IncrementalDetokenizer, StopStringMatcher, WindowDecoder


class TextTracker:
    """Owns each request's detokenizer and stop-string matcher.

    Invariant: `visible_text(req)` only grows while `req` runs (text that could still become part
    of a stop string is held back) and, once it finished, is the text of its known output tokens
    with a matched stop string trimmed unless `no_stop_trim`."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], context_len: int) -> None:
        self.tokenizer, self.eos_ids, self.context_len = tokenizer, eos_ids, context_len
        self._decoders: dict[tuple[bool, bool], WindowDecoder] = {}  # per detokenizer options, shared

    def init_req(self, req: Req) -> None:
        """Text bookkeeping for `req`: an incremental detokenizer when the request needs text while
        it runs (streaming, or stop strings to match); otherwise its text is decoded once when it
        finishes, which gives the same text (the detokenizer's invariant) without a decode call per
        token on the scheduler's critical path."""
        p = req.params
        stops = p.stop if isinstance(p.stop, list) else ([p.stop] if p.stop else [])
        req.stop_matcher = StopStringMatcher(stops)
        if self.tokenizer is None:
            return
        options = (p.skip_special_tokens, p.spaces_between_special_tokens)
        decoder = self._decoders.get(options)
        if decoder is None:
            decoder = self._decoders[options] = WindowDecoder(self.tokenizer, *options)
        if req.stream or req.stop_matcher.stops:
            req.detok = IncrementalDetokenizer(self.tokenizer, *options, decoder=decoder)
        else:
            req.final_decoder = decoder

    def check_finish(self, req: Req, token: int, n: int) -> None:
        """Detokenize `token`, the request's newest output token and its `n`-th, then set the
        finish reason if it ends the request (stop token or string, length, context)."""
        p = req.params
        text_stop = None
        if req.detok is not None:
            delta = req.detok.append([token])
            if req.stop_matcher.stops:  # without stop strings it never stops nor holds text back
                text_stop = req.stop_matcher.feed(delta).stop_index
        if token in (p.stop_token_ids or ()) or (not p.ignore_eos and token in self.eos_ids):
            req.finished_reason = FinishStop(token)
        elif text_stop is not None:
            req.finished_reason = FinishStop(self._matched_stop(req, text_stop))
        elif n >= p.max_new_tokens:
            req.finished_reason = FinishLength(p.max_new_tokens)
        elif req.prompt_len + n >= self.context_len:
            req.finished_reason = FinishLength(n)

    def visible_text(self, req: Req) -> str:
        """The text the caller may see now (see the class invariant)."""
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

    def _matched_stop(self, req: Req, index: int) -> str:
        text = req.detok.text
        return next((s for s in req.stop_matcher.stops if text.startswith(s, index)), "")
