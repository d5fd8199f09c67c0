"""POST /v1/chat/completions."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from radixlm.constrained.reasoning_gate import reasoning_gate
from radixlm.entrypoints.http.chat_output import OutputPlan
from radixlm.entrypoints.http.chat_tools import ToolPlan, plan_tools, template_message
from radixlm.entrypoints.http.errors import APIError, sse_error
from radixlm.entrypoints.http.field_policy import check_fields, check_message_fields
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
from radixlm.entrypoints.http.protocol import ChatCompletionRequest
from radixlm.entrypoints.http.sglext import sglext_field
from radixlm.entrypoints.http.state import ServerState
from radixlm.entrypoints.request_output import OutputAccumulator
from radixlm.entrypoints.request_plan import RequestPlan
from radixlm.ipc.finish import FinishStop
from radixlm.parsers.reasoning import END as REASONING_END
from radixlm.parsers.reasoning import START as REASONING_START
from radixlm.parsers.reasoning import starts_in_reasoning
from radixlm.parsers.tool_call.registry import detect_tool_parser
from radixlm.tokenizer.loader import apply_chat_template

# Template variables the server sets itself; chat_template_kwargs may not override them.
_RESERVED_TEMPLATE_VARS = frozenset(
    {"messages", "tools", "documents", "add_generation_prompt", "continue_final_message", "tokenize", "chat_template"}
)


def chat_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        check_fields(body, "chat")
        check_message_fields(body.messages)
        adapter = lora_of(state, body, check_model(state, body.model))
        pending, plan, gate = await state.prepare(_requests, state, body, adapter)
        reqs = await state.requests(pending)  # images prepared off the preparation thread
        for req in reqs if gate is not None else ():
            req.params.reasoning_gate = gate
        if body.stream:
            return StreamingResponse(_stream(state, body, reqs, plan), media_type="text/event-stream")
        accs = await state.run(reqs, request)
        choices = [_choice(state, body, plan, i, acc) for i, acc in enumerate(accs)]
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


def _requests(
    state: ServerState, body: ChatCompletionRequest, adapter: Optional[str]
) -> tuple[RequestPlan, OutputPlan, Any]:
    """The engine requests for a chat body (template, tokens, sampling params) on LoRA adapter
    `adapter` (None: base), planned (their images still being prepared), how to read their
    output, and the reasoning gate their params take, or None (on the preparation thread:
    templates, tokenizing and the gate can be slow)."""
    tools = plan_tools(body, _tool_parser(state))
    prompt_ids, images = _render(state, body, tools)
    room = state.token_room(len(prompt_ids))
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = sampling_params(body, max_tokens, room)
    _response_format(body, params)
    if tools.schema is not None:
        params["json_schema"] = json.dumps(tools.schema)
    if tools.keep_special_tokens:
        params["skip_special_tokens"] = False
    pending = state.plan_requests(
        prompt=None,
        input_ids=[prompt_ids],
        sampling_params=params,
        return_logprob=body.logprobs,
        logprob_start_len=None,
        top_logprobs_num=body.top_logprobs or 0,
        stream=body.stream,
        rid=body.rid,
        image_data=[images] if images else None,
        lora_path=adapter,
    )
    plan = _output_plan(state, body, tools)
    gate = None
    if plan.reasoning_forced is not None and any(k in params for k in _CONSTRAINTS):
        gate = _reasoning_gate(state, plan.reasoning_forced)
        plan = dataclasses.replace(plan, reasoning_forced=plan.reasoning_forced and gate is not None)
    return pending, plan, gate


def _reasoning_gate(state: ServerState, opened: bool) -> Any:
    """A reasoning model's constraint holds from the end of its reasoning section on, where its
    tokenizer writes both markers as single tokens (as reasoning models' do): the gate the
    requests' params take. Otherwise None: the constraint covers the whole output, which then
    holds a reasoning section only if the constraint itself writes `<think>`."""
    try:
        return reasoning_gate(state.engine.tokenizer, REASONING_START, REASONING_END, opened, state.engine.eos_ids)
    except ValueError:
        return None


_CONSTRAINTS = ("regex", "json_schema", "ebnf")


def _tool_parser(state: ServerState) -> Optional[str]:
    """The served tool-call format: the flag, else the one the chat template writes."""
    parser = state.engine.server_args.tool_call_parser
    tokenizer = state.engine.tokenizer
    return parser or detect_tool_parser(getattr(tokenizer, "chat_template", None) if tokenizer else None)


def _output_plan(state: ServerState, body: ChatCompletionRequest, tools: ToolPlan) -> OutputPlan:
    """Reasoning is separated when the server has a reasoning parser and the request keeps
    `separate_reasoning`; a constraint (response_format, tools) then applies after the reasoning
    section."""
    name = state.engine.server_args.reasoning_parser
    forced = None
    if name is not None and body.separate_reasoning:
        forced = starts_in_reasoning(name)
    return OutputPlan(
        reasoning_forced=forced,
        split=tools.split,
        tool_names=tools.tool_names,
        parallel=tools.parallel,
        cut_stop_token=tools.keep_special_tokens,
    )


def _render(state: ServerState, body: ChatCompletionRequest, tools: ToolPlan) -> tuple[list[int], list[str]]:
    """The prompt's ids and its image sources in prompt order (each image part renders as the
    model's image placeholder token)."""
    tokenizer = state.engine.tokenizer
    if tokenizer is None:
        raise APIError(400, "chat needs a tokenizer; the server runs with --skip-tokenizer-init")
    images = [url for m in body.messages for url in _image_urls(m.content)]
    state.vet_images(images, "messages")
    marker = state.engine.images.chat_marker(tokenizer) if images else ""
    messages = [template_message(m.role, _content(m.content, marker), m) for m in body.messages]
    kwargs = body.chat_template_kwargs or {}
    reserved = sorted(_RESERVED_TEMPLATE_VARS & set(kwargs))
    if reserved:
        raise APIError(400, f"chat_template_kwargs may not set {reserved[0]!r}", "chat_template_kwargs")
    try:
        text = apply_chat_template(
            tokenizer,
            messages,
            add_generation_prompt=not body.continue_final_message,
            continue_final_message=body.continue_final_message,
            tools=tools.template_tools,
            template_kwargs=kwargs,
        )
    except APIError:
        raise
    except Exception as exc:  # template errors (jinja, bad roles) are the client's to fix
        raise APIError(400, f"could not apply the chat template: {exc}", "messages") from None
    return tokenizer.encode(text, add_special_tokens=False), images


_DETAILS = (None, "auto", "low", "high")


def _image_urls(content: Any) -> list[str]:
    """The sources of a message's `image_url` parts (`{"url": ...}` or a bare string)."""
    if not isinstance(content, list):
        return []
    urls = []
    for part in content:
        if part.get("type") == "image_url":
            image = part.get("image_url")
            if isinstance(image, dict) and image.get("detail") not in _DETAILS:
                detail = image.get("detail")
                raise APIError(400, f"image_url.detail must be auto, low or high, got {detail!r}", "messages")
            urls.append(image.get("url") if isinstance(image, dict) else image)
    return urls


def _content(content: Any, image_marker: str = "") -> str:
    """A message's text; an `image_url` part becomes `image_marker`, the model family's image
    text (only set when the served model takes images: the parts were vetted first)."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        kind = part.get("type")
        if kind == "image_url" and image_marker:
            parts.append(image_marker)
        elif kind != "text":
            raise APIError(400, f"message content of type {kind!r} is not supported", "messages")
        else:
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
        params["json_schema"] = json.dumps(schema)


def _choice(
    state: ServerState, body: ChatCompletionRequest, plan: OutputPlan, index: int, acc: OutputAccumulator
) -> dict:
    message = plan.message(_text(state, plan, acc, acc.text))
    return {
        "index": index,
        "message": message,
        "logprobs": _logprobs(state, body, acc, 0),
        "finish_reason": _finish(acc, bool(message.get("tool_calls"))),
        "matched_stop": matched_stop(acc),
    }


def _text(state: ServerState, plan: OutputPlan, acc: OutputAccumulator, text: str) -> str:
    """`text` without the stop token's own text at the end of a finished output, when the plan
    keeps special tokens (so a tool-call format's markers survive)."""
    token = acc.finish.matched if plan.cut_stop_token and acc.done and isinstance(acc.finish, FinishStop) else None
    if not isinstance(token, int) or state.engine.tokenizer is None:
        return text
    tail = state.engine.tokenizer.decode([token], skip_special_tokens=False)
    return text[: len(text) - len(tail)] if tail and text.endswith(tail) else text


def _finish(acc: OutputAccumulator, called: bool) -> Optional[str]:
    """OpenAI's "tool_calls" when a choice that stopped by itself made calls."""
    reason = finish_reason(acc)
    return "tool_calls" if called and reason == "stop" else reason


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


async def _stream(state: ServerState, body: ChatCompletionRequest, reqs: list, plan: OutputPlan) -> AsyncIterator[str]:
    """First delta per choice carries the role; exactly one finish_reason per choice; content,
    reasoning_content and tool_calls deltas as `ChoiceStream` reads them."""
    cid, created = new_id("chatcmpl"), now()
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": state.model_name}
    accs: dict[int, OutputAccumulator] = {}
    sent_lp = [0] * len(reqs)
    readers = [plan.stream() for _ in reqs]
    try:
        for i in range(len(reqs)):
            yield _chunk(base, i, {"role": "assistant", "content": ""})
        async for i, acc in state.stream(reqs):
            accs[i] = acc
            logprobs = _logprobs(state, body, acc, sent_lp[i])
            sent_lp[i] = len(acc.meta.get("output_token_logprobs", []))
            deltas = readers[i].feed(_text(state, plan, acc, acc.last_chunk["text"]))
            deltas += readers[i].finish() if acc.done else []
            for chunk in _delta_chunks(base, i, deltas, logprobs):
                yield chunk
            if acc.done:
                yield _chunk(base, i, {}, finish=_finish(acc, readers[i].has_calls), extra=sglext_field(body, [acc]))
    except APIError as exc:
        yield sse_error(exc.status, exc.message)
        yield "data: [DONE]\n\n"
        return
    if body.stream_options and body.stream_options.include_usage:
        yield sse({**base, "choices": [], "usage": usage([accs[i] for i in range(len(reqs))], body.n)})
    yield "data: [DONE]\n\n"


def _delta_chunks(base: dict, index: int, deltas: list[dict], logprobs: Optional[dict]) -> list[str]:
    """One chunk per delta; the step's logprobs ride on the first (an empty content delta
    carries them when the step added no text)."""
    if not deltas and logprobs:
        deltas = [{"content": ""}]
    return [_chunk(base, index, d, logprobs=logprobs if k == 0 else None) for k, d in enumerate(deltas)]


def _chunk(
    base: dict,
    index: int,
    delta: dict,
    logprobs: Optional[dict] = None,
    finish: Optional[str] = None,
    extra: Optional[dict] = None,
) -> str:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return sse({**base, "choices": [choice], **(extra or {})})
