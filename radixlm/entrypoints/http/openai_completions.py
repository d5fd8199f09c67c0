"""POST /v1/completions."""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from radixlm.entrypoints.http.errors import APIError, sse_error
from radixlm.entrypoints.http.field_policy import check_fields
from radixlm.entrypoints.http.openai_common import (
    check_model,
    finish_reason,
    lora_of,
    matched_stop,
    new_id,
    now,
    sampling_params,
    sse,
    token_text,
    usage,
)
from radixlm.entrypoints.http.protocol import CompletionRequest
from radixlm.entrypoints.http.sglext import sglext_field
from radixlm.entrypoints.http.state import ServerState
from radixlm.entrypoints.request_output import OutputAccumulator
from radixlm.ipc.messages import TokenizedGenerateReq


def completions_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_fields(body, "completions")
        adapter = lora_of(state, body, check_model(state, body.model))
        reqs, prompts = await state.prepare(_requests, state, body, adapter)
        if body.stream:
            return StreamingResponse(_stream(state, body, reqs, prompts), media_type="text/event-stream")
        accs = await state.run(reqs, request)
        choices = [_choice(state, body, i, acc, prompts[i // body.n]) for i, acc in enumerate(accs)]
        return {
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": now(),
            "model": state.model_name,
            "choices": choices,
            "usage": usage(accs, body.n),
            **sglext_field(body, accs),
        }

    return router


def _requests(
    state: ServerState, body: CompletionRequest, adapter: Optional[str]
) -> tuple[list[TokenizedGenerateReq], list[list[int]]]:
    """The engine requests for a completions body and its prompts' token ids (on the
    preparation thread: tokenizing can be slow), all on LoRA adapter `adapter` (None: base)."""
    prompts = _prompt_ids(state, body.prompt)
    room = state.token_room(max(len(p) for p in prompts))
    params = sampling_params(body, body.max_tokens, room)
    want_lp = body.logprobs is not None
    reqs, _ = state.make_requests(
        prompt=None,
        input_ids=prompts,
        sampling_params=params,
        return_logprob=want_lp,
        logprob_start_len=0 if (want_lp and body.echo) else None,
        top_logprobs_num=body.logprobs or 0,
        stream=body.stream,
        rid=body.rid,
        lora_path=adapter,
    )
    return reqs, prompts


def _prompt_ids(state: ServerState, prompt: Any) -> list[list[int]]:
    """str | [str] | [int] | [[int]] -> token id lists (at least one, none empty)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", "prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if all(isinstance(p, list) for p in prompt):
        return [list(p) for p in prompt]
    if state.engine.tokenizer is None:
        raise APIError(400, "no tokenizer: send token ids", "prompt")
    return [state.engine.tokenizer.encode(p) for p in prompt]


def _choice(state: ServerState, body: CompletionRequest, index: int, acc: OutputAccumulator, prompt: list[int]) -> dict:
    text = acc.text
    if body.echo:
        text = _decode(state, prompt) + text
    return {
        "index": index,
        "text": text,
        "logprobs": _logprobs(state, body, acc),
        "finish_reason": finish_reason(acc),
        "matched_stop": matched_stop(acc),
    }


def _decode(state: ServerState, ids: list[int]) -> str:
    return state.engine.tokenizer.decode(ids) if state.engine.tokenizer is not None else ""


def _logprobs(state: ServerState, body: CompletionRequest, acc: OutputAccumulator, start: int = 0) -> Optional[dict]:
    """OpenAI's legacy logprobs object: tokens, token_logprobs, top_logprobs, text_offset."""
    if body.logprobs is None or state.engine.tokenizer is None:
        return None
    entries = list(acc.meta.get("output_token_logprobs", []))[start:]
    tops = list(acc.meta.get("output_top_logprobs", []))[start:]
    if body.echo and start == 0:
        entries = list(acc.meta.get("input_token_logprobs", [])) + entries
        tops = list(acc.meta.get("input_top_logprobs", [])) + tops
    tokens = [token_text(state, t) for _, t in entries]
    offsets, pos = [], 0
    for tok in tokens:
        offsets.append(pos)
        pos += len(tok)
    top = [None if row is None else _top_dict(state, row) for row in tops]
    return {"tokens": tokens, "token_logprobs": [lp for lp, _ in entries], "top_logprobs": top, "text_offset": offsets}


def _top_dict(state: ServerState, row: list) -> dict[str, float]:
    """token text -> logprob, best first; tokens that decode alike (e.g. partial UTF-8 bytes,
    all "\ufffd") keep the best one's logprob instead of being overwritten by worse ones."""
    out: dict[str, float] = {}
    for lp, t in row:
        out.setdefault(token_text(state, t), lp)
    return out


async def _stream(
    state: ServerState, body: CompletionRequest, reqs: list, prompts: list[list[int]]
) -> AsyncIterator[str]:
    cid, created = new_id("cmpl"), now()
    sent_lp = [0] * len(reqs)
    accs: dict[int, OutputAccumulator] = {}
    echoed: set[int] = set()
    try:
        async for i, acc in state.stream(reqs):
            accs[i] = acc
            text = acc.last_chunk["text"]
            if body.echo and i not in echoed:
                text = _decode(state, prompts[i // body.n]) + text
                echoed.add(i)
            logprobs = _logprobs(state, body, acc, start=sent_lp[i]) if body.logprobs is not None else None
            sent_lp[i] = len(acc.meta.get("output_token_logprobs", []))
            choice = {
                "index": i,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason(acc) if acc.done else None,
            }
            yield sse(
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": state.model_name,
                    "choices": [choice],
                    **(sglext_field(body, [acc]) if acc.done else {}),
                }
            )
    except APIError as exc:
        yield sse_error(exc.status, exc.message)
        yield "data: [DONE]\n\n"
        return
    if body.stream_options and body.stream_options.include_usage:
        ordered = [accs[i] for i in range(len(reqs))]
        yield sse(
            {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": state.model_name,
                "choices": [],
                "usage": usage(ordered, body.n),
            }
        )
    yield "data: [DONE]\n\n"
