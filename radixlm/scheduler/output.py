"""The messages the scheduler sends the front about each request: new ids, new text, meta."""

from __future__ import annotations

from typing import Optional

from radixlm.ipc.messages import ReqOutput
from radixlm.scheduler.request import Req
from radixlm.scheduler.text_tracker import TextTracker


class OutputBuilder:
    """Invariant: the ids and text of every message for a request, concatenated, are its known
    output ids and its visible text (`TextTracker.visible_text`); a message carries a finish
    reason exactly when its request has finished, and then it is the request's last."""

    def __init__(self, text: TextTracker) -> None:
        self.text = text

    def make_output(self, req: Req) -> Optional[ReqOutput]:
        """The message for `req` this step (None when a non-streaming request is still running)."""
        if not req.finished and not req.stream:
            return None
        return self._message(req)

    def final_output(self, req: Req) -> ReqOutput:
        """The last message of `req`, which has finished."""
        assert req.finished, req.rid
        return self._message(req)

    def _message(self, req: Req) -> ReqOutput:
        text = self.text.visible_text(req)
        delta_text = text[req.sent_text_len :]
        known = len(req.output_ids) - req.pending_tokens
        new_ids = req.output_ids[req.sent_ids : known]
        req.sent_text_len, req.sent_ids = len(text), known
        return ReqOutput(req.rid, new_ids, delta_text, req.finished_reason, _meta(req), req.embedding)


def _meta(req: Req) -> dict:
    reason = req.finished_reason
    meta = {
        "id": req.rid,
        "prompt_tokens": len(req.origin_input_ids),
        "completion_tokens": len(req.output_ids) - req.pending_tokens,
        "cached_tokens": req.cached_tokens,
        "finish_reason": reason.to_json() if reason is not None else None,
    }
    if req.error:
        meta["error"] = req.error
    if req.grammar is not None:
        meta["jump_forward_tokens"] = req.jump_forward_tokens
    if req.spec_verify_ct:
        meta.update(spec_verify_ct=req.spec_verify_ct, spec_accepted_tokens=req.spec_accepted_tokens)
        meta["spec_accept_length"] = req.spec_decode_tokens / req.spec_verify_ct
    if req.return_logprob:
        lp = req.logprobs
        meta.update(
            input_token_logprobs=lp.input_token_logprobs,
            input_top_logprobs=lp.input_top_logprobs,
            output_token_logprobs=lp.output_token_logprobs,
            output_top_logprobs=lp.output_top_logprobs,
        )
    return meta
