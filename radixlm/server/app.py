"""Assembles the FastAPI app: auth and payload-size guards, error handlers, the routers."""

from __future__ import annotations

from typing import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from radixlm.engine import Engine
from radixlm.server.errors import error_response, install_error_handlers
from radixlm.server.metrics import Metrics
from radixlm.server.native_api import native_router
from radixlm.server.openai_chat import chat_router
from radixlm.server.openai_completions import completions_router
from radixlm.server.openai_models import models_router
from radixlm.server.state import ServerState

OPEN_PATHS = {"/health"}  # reachable without the API key


def create_app(engine: Engine, model_name: str, api_key: str | None = None,
               max_payload_size: int = 32 << 20) -> FastAPI:
    """One app per engine; all state lives in `ServerState`, none at module level."""
    app = FastAPI(title="radixlm", version="0.1.0")
    state = ServerState(engine=engine, model_name=model_name, metrics=Metrics(engine.get_server_info),
                        api_key=api_key)
    app.state.radixlm = state
    install_error_handlers(app)
    _install_guards(app, api_key, max_payload_size)
    for router in (native_router(state), completions_router(state), chat_router(state), models_router(state)):
        app.include_router(router)
    return app


def _install_guards(app: FastAPI, api_key: str | None, max_payload_size: int) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if api_key and request.url.path not in OPEN_PATHS and not _authorized(request, api_key):
            return error_response(401, "missing or invalid API key")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_payload_size:
            return error_response(413, f"request body over {max_payload_size} bytes")
        return await call_next(request)


def _authorized(request: Request, api_key: str) -> bool:
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    return token == api_key
