"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from radixlm.entrypoints.http.errors import APIError, sse_error
from radixlm.entrypoints.http.openai_common import (
    check_model,
    finish_reason,
    matched_stop,
    new_id,
    now,
    sampling_params,
    sse,
    token_text,
    usage,
)
from radixlm.entrypoints.http.protocol import ChatCompletionRequest
from radixlm.entrypoints.http.sglext import sglext_field
from radixlm.entrypoints.http.state import ServerState
from radixlm.entrypoints.request_output import OutputAccumulator
from radixlm.ipc.messages import TokenizedGenerateReq
from radixlm.tokenizer.loader import apply_chat_template


def chat_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(state, body.model)
        reqs = await state.prepare(_requests, state, body)
        if body.stream:
            return StreamingResponse(_stream(state, body, reqs), media_type="text/event-stream")
        accs = await state.run(reqs, request)
        choices = [_choice(state, body, i, acc) for i, acc in enumerate(accs)]
        return {
            "id": new_id("chatcmpl"),
            "object": "chat.completion",
            "created": now(),
            "model": state.model_name,
            "choices": choices,
            "usage": usage(accs, body.n),
            **sglext_field(body, accs),
        }

    return router


def _requests(state: ServerState, body: ChatCompletionRequest) -> list[TokenizedGenerateReq]:
    """The engine requests for a chat body: template, tokens, sampling params (on the
    preparation thread: templates and tokenizing can be slow)."""
    prompt_ids = _render(state, body)
    room = state.token_room(len(prompt_ids))
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = sampling_params(body, max_tokens, room)
    _response_format(body, params)
    reqs, _ = state.make_requests(
        prompt=None,
        input_ids=[prompt_ids],
        sampling_params=params,
        return_logprob=body.logprobs,
        logprob_start_len=None,
        top_logprobs_num=body.top_logprobs or 0,
        stream=body.stream,
        rid=body.rid,
    )
    return reqs


def _render(state: ServerState, body: ChatCompletionRequest) -> list[int]:
    tokenizer = state.engine.tokenizer
    if tokenizer is None:
        raise APIError(400, "chat needs a tokenizer; the server runs with --skip-tokenizer-init")
    state.vet_images([url for m in body.messages for url in _image_urls(m.content)], "messages")
    messages = [{"role": m.role, "content": _content(m.content)} for m in body.messages]
    try:
        text = apply_chat_template(
            tokenizer,
            messages,
            add_generation_prompt=not body.continue_final_message,
            continue_final_message=body.continue_final_message,
        )
    except Exception as exc:  # template errors (jinja, bad roles) are the client's to fix
        raise APIError(400, f"could not apply the chat template: {exc}", "messages") from None
    return tokenizer.encode(text, add_special_tokens=False)


def _image_urls(content: Any) -> list[str]:
    """The sources of a message's `image_url` parts (`{"url": ...}` or a bare string)."""
    if not isinstance(content, list):
        return []
    urls = []
    for part in content:
        if part.get("type") == "image_url":
            image = part.get("image_url")
            urls.append(image.get("url") if isinstance(image, dict) else image)
    return urls


def _content(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise APIError(400, f"message content of type {part.get('type')!r} is not supported", "messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def _response_format(body: ChatCompletionRequest, params: dict) -> None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return
    if fmt.type == "json_object":
        params["json_schema"] = '{"type": "object"}'
    else:
        schema = (fmt.json_schema or {}).get("schema")
        if schema is None:
            raise APIError(400, "response_format.json_schema.schema is required", "response_format")
        import json

        params["json_schema"] = json.dumps(schema)


def _choice(state: ServerState, body: ChatCompletionRequest, index: int, acc: OutputAccumulator) -> dict:
    return {
        "index": index,
        "message": {"role": "assistant", "content": acc.text},
        "logprobs": _logprobs(state, body, acc, 0),
        "finish_reason": finish_reason(acc),
        "matched_stop": matched_stop(acc),
    }


def _logprobs(state: ServerState, body: ChatCompletionRequest, acc: OutputAccumulator, start: int) -> Optional[dict]:
    if not body.logprobs:
        return None
    entries = list(acc.meta.get("output_token_logprobs", []))[start:]
    tops = list(acc.meta.get("output_top_logprobs", []))[start:]
    content = []
    for (lp, tok), top in zip(entries, tops):
        text = token_text(state, tok)
        content.append(
            {
                "token": text,
                "logprob": lp,
                "bytes": list(text.encode()),
                "top_logprobs": [
                    {"token": token_text(state, t), "logprob": v, "bytes": list(token_text(state, t).encode())}
                    for v, t in top
                ],
            }
        )
    return {"content": content}


async def _stream(state: ServerState, body: ChatCompletionRequest, reqs: list) -> AsyncIterator[str]:
    """First delta per choice carries the role; exactly one finish_reason per choice."""
    cid, created = new_id("chatcmpl"), now()
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": state.model_name}
    accs: dict[int, OutputAccumulator] = {}
    sent_lp = [0] * len(reqs)
    try:
        for i in range(len(reqs)):
            yield sse(
                {
                    **base,
                    "choices": [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
        async for i, acc in state.stream(reqs):
            accs[i] = acc
            logprobs = _logprobs(state, body, acc, sent_lp[i])
            sent_lp[i] = len(acc.meta.get("output_token_logprobs", []))
            text = acc.last_chunk["text"]
            if text or logprobs:
                yield sse(
                    {
                        **base,
                        "choices": [
                            {"index": i, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}
                        ],
                    }
                )
            if acc.done:
                yield sse(
                    {
                        **base,
                        "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish_reason(acc)}],
                        **sglext_field(body, [acc]),
                    }
                )
    except APIError as exc:
        yield sse_error(exc.status, exc.message)
        yield "data: [DONE]\n\n"
        return
    if body.stream_options and body.stream_options.include_usage:
        yield sse({**base, "choices": [], "usage": usage([accs[i] for i in range(len(reqs))], body.n)})
    yield "data: [DONE]\n\n"
