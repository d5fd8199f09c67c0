"""POST /v1/embeddings (OpenAI) and POST /encode (SGLang's native shape), for a server started
with --is-embedding; on a generation server both are a 400 naming the mismatch."""

from __future__ import annotations

import base64
import struct
from typing import Any, Optional

from fastapi import APIRouter, Request

from radixlm.entrypoints.http.errors import APIError
from radixlm.entrypoints.http.field_policy import check_fields
from radixlm.entrypoints.http.openai_common import check_model
from radixlm.entrypoints.http.protocol import EmbeddingRequest, EncodeRequest
from radixlm.entrypoints.http.state import ServerState
from radixlm.ipc.messages import TokenizedGenerateReq


def embeddings_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict:
        check_fields(body, "embeddings")
        check_model(state, body.model)
        text, ids = _split_input(body.input)
        reqs, _ = await state.prepare(_requests, state, text, ids, body.dimensions, body.rid)
        accs = await state.run(reqs, request)
        vectors = [acc.embedding_result()["embedding"] for acc in accs]
        tokens = sum(acc.meta.get("prompt_tokens", 0) for acc in accs)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                for i, v in enumerate(vectors)
            ],
            "model": state.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @router.post("/encode")
    async def encode(body: EncodeRequest, request: Request) -> Any:
        check_fields(body, "encode", ignored=frozenset())
        reqs, batched = await state.prepare(_requests, state, body.text, body.input_ids, body.dimensions, body.rid)
        results = [acc.embedding_result() for acc in await state.run(reqs, request)]
        return results if batched else results[0]

    return router


def _requests(
    state: ServerState, prompt: Any, input_ids: Any, dimensions: Optional[int], rid: Any
) -> tuple[list[TokenizedGenerateReq], bool]:
    """Engine.make_embedding_requests on the preparation thread, a ValueError turned into a 400."""
    try:
        return state.engine.make_embedding_requests(prompt, input_ids, dimensions, rid)
    except (ValueError, TypeError) as exc:
        param = "dimensions" if str(exc).startswith("dimensions") else None
        raise APIError(400, str(exc), param) from None


def _split_input(value: Any) -> tuple[Any, Any]:
    """OpenAI's `input` as the Engine's (prompt, input_ids): text is tokenized by the engine,
    token ids pass through; an empty list is a 400."""
    if isinstance(value, str):
        return value, None
    if not value:
        raise APIError(400, "input must not be empty", "input")
    return (value, None) if isinstance(value[0], str) else (None, value)


def _encode(vector: list[float], encoding_format: str) -> Any:
    """float: the list; base64: little-endian float32 bytes, as OpenAI's clients decode them."""
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
