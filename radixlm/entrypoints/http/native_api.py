"""SGLang's native API: /generate, health, info, cache, abort, tokenize, metrics."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from radixlm.entrypoints.http.errors import APIError, sse_error
from radixlm.entrypoints.http.field_policy import check_fields
from radixlm.entrypoints.http.protocol import (
    AbortRequest,
    ApplyChatTemplateRequest,
    DetokenizeRequest,
    GenerateRequest,
    LoadLoraAdapterRequest,
    TokenizeRequest,
    UnloadLoraAdapterRequest,
)
from radixlm.entrypoints.http.state import ServerState
from radixlm.entrypoints.http.tokenizer_path import loadable_tokenizer_path
from radixlm.entrypoints.request_output import OutputAccumulator


def native_router(state: ServerState) -> APIRouter:
    router = APIRouter()
    engine = state.engine

    @router.post("/generate")
    async def generate(body: GenerateRequest, request: Request) -> Any:
        check_fields(body, "generate", ignored=frozenset())
        state.vet_images(_image_sources(body.image_data), "image_data")
        state.check_lora(body.lora_path)
        plan = await state.prepare(
            state.plan_requests,
            prompt=body.text,
            sampling_params=body.sampling_params,
            input_ids=body.input_ids,
            return_logprob=body.return_logprob,
            logprob_start_len=body.logprob_start_len,
            top_logprobs_num=body.top_logprobs_num,
            stream=body.stream,
            rid=body.rid,
            image_data=body.image_data,
            lora_path=body.lora_path,
        )
        reqs, batched = await state.requests(plan), plan.batched
        texts = body.return_text_in_logprobs
        if body.stream:
            return StreamingResponse(_sse(state, reqs, texts), media_type="text/event-stream")
        accs = await state.run(reqs, request)
        results = [_result(state, acc, texts) for acc in accs]
        return results if batched else results[0]

    @router.get("/health")
    async def health() -> Response:
        if not engine.is_alive():
            raise APIError(503, "scheduler is not running")
        return Response(status_code=200)

    @router.get("/health_generate")
    async def health_generate(request: Request) -> Response:
        if engine.pooling is not None:  # an embedding model: one embedding instead
            reqs, _ = engine.make_embedding_requests(None, [0])
        else:
            reqs, _ = state.make_requests(
                prompt=None,
                input_ids=[0],
                sampling_params={"max_new_tokens": 1},
                return_logprob=False,
                logprob_start_len=None,
                top_logprobs_num=None,
                stream=False,
            )
        await state.run(reqs, request)
        return Response(status_code=200)

    @router.get("/model_info")  # SGLang 0.5's name; /get_model_info is the older one
    @router.get("/get_model_info")
    async def model_info() -> dict:
        cfg = engine.model_config
        return {
            "model_path": engine.server_args.model_path,
            "tokenizer_path": loadable_tokenizer_path(engine.server_args),
            "is_generation": engine.pooling is None,
            "served_model_name": state.model_name,
            "model_type": getattr(cfg, "model_type", None),
            "architectures": getattr(cfg, "architectures", None),
            "quantization": (engine.get_server_info().get("quantization") or {}).get("quant_method"),
            "image_token": _image_token(engine),
        }

    @router.get("/server_info")  # SGLang 0.5's name; /get_server_info is the older one
    @router.get("/get_server_info")
    async def server_info() -> dict:
        info = engine.get_server_info()
        return {
            **_public_args(engine),
            **info,
            "tokenizer_path": loadable_tokenizer_path(engine.server_args),
            "internal_states": [info],
        }

    @router.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        if not engine.flush_cache():
            raise APIError(400, "cache not flushed: requests are running")
        return Response("Cache flushed.\n", status_code=200)

    @router.post("/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoraAdapterRequest) -> dict:
        loaded = await _lora_call(state, engine.load_lora_adapter, body.lora_name, body.lora_path)
        return {"success": True, "loaded_adapters": loaded}

    @router.post("/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoraAdapterRequest) -> dict:
        loaded = await _lora_call(state, engine.unload_lora_adapter, body.lora_name)
        return {"success": True, "loaded_adapters": loaded}

    @router.post("/abort_request")
    async def abort_request(body: AbortRequest) -> Response:
        engine.abort(body.rid)
        return Response(status_code=200)

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict:
        text = body.text if body.text is not None else body.prompt
        if text is None:
            raise APIError(400, "pass `text` (or `prompt`) to tokenize")
        ids = await state.prepare(_tokenizer(state).encode, text, add_special_tokens=body.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.limits.context_length}

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict:
        if any(not 0 <= t < engine.vocab_size for t in body.tokens):
            raise APIError(400, f"token ids must be in [0, {engine.vocab_size})")
        return {"text": await state.prepare(_tokenizer(state).decode, body.tokens)}

    @router.post("/apply_chat_template")
    async def apply_chat_template(body: ApplyChatTemplateRequest) -> dict:
        tokenizer = _tokenizer(state)
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(400, "the served model has no chat template")
        try:
            text = await state.prepare(
                engine.apply_chat_template, body.messages, add_generation_prompt=body.add_generation_prompt
            )
        except Exception as exc:  # the template itself rejects these messages (e.g. role order)
            raise APIError(400, f"chat template failed: {exc}") from exc
        return {"text": text}

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return router


async def _sse(state: ServerState, reqs: list, texts: bool) -> AsyncIterator[str]:
    """SGLang's stream: cumulative `text` per event, `index` for batches, then [DONE]."""
    try:
        async for i, acc in state.stream(reqs):
            out = _result(state, acc, texts)
            out["index"] = i
            yield f"data: {json.dumps(out)}\n\n"
    except APIError as exc:
        yield sse_error(exc.status, exc.message)
    yield "data: [DONE]\n\n"


async def _lora_call(state: ServerState, fn: Any, *args: str) -> Any:
    """Run an adapter load / unload off the event loop (it reads files); a refusal is a 400."""
    try:
        return await state.prepare(fn, *args)
    except ValueError as exc:
        raise APIError(400, str(exc), "lora_name") from None


def _image_sources(image_data: Any) -> list[Any]:
    """SGLang's `image_data`: one source, a list, or a list per prompt; None entries skipped."""
    if image_data is None:
        return []
    items = image_data if isinstance(image_data, list) else [image_data]
    flat = [x for item in items for x in (item if isinstance(item, list) else [item])]
    return [x for x in flat if x is not None]


def _result(state: ServerState, acc: OutputAccumulator, texts: bool) -> dict:
    meta = dict(acc.meta)
    for key in ("input_token_logprobs", "output_token_logprobs"):
        if key in meta:
            meta[key] = [_entry(state, e, texts) for e in meta[key]]
    for key in ("input_top_logprobs", "output_top_logprobs"):
        if key in meta:
            meta[key] = [None if row is None else [_entry(state, e, texts) for e in row] for row in meta[key]]
    return {"text": acc.text, "output_ids": list(acc.output_ids), "meta_info": meta}


def _entry(state: ServerState, entry: tuple, texts: bool) -> list:
    logprob, token = entry
    return [logprob, token, _tokenizer(state).decode([token]) if texts else None]


def _tokenizer(state: ServerState) -> Any:
    if state.engine.tokenizer is None:
        raise APIError(400, "the server runs with --skip-tokenizer-init: no tokenizer")
    return state.engine.tokenizer


def _image_token(engine: Any) -> str | None:
    """The text a prompt holds where an image goes, one placeholder token inside (Qwen2-VL:
    its vision span); None for a text-only model."""
    if engine.images is None or engine.tokenizer is None:
        return None
    return engine.images.placeholder_text(engine.tokenizer)


def _public_args(engine: Any) -> dict:
    args = vars(engine.server_args).copy()
    args.pop("api_key", None)
    return args
