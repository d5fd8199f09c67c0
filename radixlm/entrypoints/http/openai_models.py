"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter

from radixlm.entrypoints.http.errors import APIError
from radixlm.entrypoints.http.state import ServerState


def models_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    def card() -> dict:
        return {
            "id": state.model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "radixlm",
            "root": state.engine.server_args.model_path,
            "max_model_len": state.engine.limits.context_length,
        }

    @router.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [card()]}

    @router.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        if model_id != state.model_name:
            raise APIError(404, f"model {model_id!r} not found", "model")
        return card()

    return router
