"""Assembles the FastAPI app: auth and payload-size guards, error handlers, the routers."""

from __future__ import annotations

import hmac

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radixlm.entrypoints.engine import Engine
from radixlm.entrypoints.http.embeddings import embeddings_router
from radixlm.entrypoints.http.errors import error_response, install_error_handlers
from radixlm.entrypoints.http.media import MediaPolicy
from radixlm.entrypoints.http.metrics import Metrics
from radixlm.entrypoints.http.native_api import native_router
from radixlm.entrypoints.http.openai_chat import chat_router
from radixlm.entrypoints.http.openai_completions import completions_router
from radixlm.entrypoints.http.openai_models import models_router
from radixlm.entrypoints.http.state import ServerState

OPEN_PATHS = {"/health"}  # reachable without the API key


def create_app(
    engine: Engine,
    model_name: str,
    api_key: str | None = None,
    max_payload_size: int = 32 << 20,
    media: MediaPolicy | None = None,
) -> FastAPI:
    """One app per engine; all state lives in `ServerState`, none at module level. Every route
    but /health (the OpenAPI schema and docs included) needs the API key when one is set."""
    app = FastAPI(title="radixlm", version="0.1.0")
    state = ServerState(
        engine=engine,
        model_name=model_name,
        metrics=Metrics(engine.get_server_info, model_name if engine.server_args.enable_metrics else None),
        api_key=api_key,
        media=media or MediaPolicy(),
    )
    app.state.radixlm = state
    install_error_handlers(app)
    app.add_middleware(_Guard, api_key=api_key, max_payload_size=max_payload_size)
    for router in (
        native_router(state),
        completions_router(state),
        chat_router(state),
        models_router(state),
        embeddings_router(state),
    ):
        app.include_router(router)
    return app


class _Guard:
    """API key and body-size checks as a pure ASGI middleware. (Starlette's BaseHTTPMiddleware
    would hide client disconnects from the routes, so aborted requests would keep running.)
    The size cap applies to the declared Content-Length and to the bytes actually read, so a
    chunked body cannot slip past it."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_payload_size: int) -> None:
        self.app, self.api_key, self.max_payload_size = app, api_key, max_payload_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.api_key and scope["path"] not in OPEN_PATHS and not _authorized(headers, self.api_key):
            await error_response(401, "missing or invalid API key")(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_payload_size:
            await error_response(413, self._too_large())(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if seen > self.max_payload_size:
                raise HTTPException(413, self._too_large())  # FastAPI re-raises it from body parsing
            return message

        return limited

    def _too_large(self) -> str:
        return f"request body over {self.max_payload_size} bytes"


def _authorized(headers: Headers, api_key: str) -> bool:
    header = headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else headers.get("x-api-key", "")
    return hmac.compare_digest(token.encode(), api_key.encode())
