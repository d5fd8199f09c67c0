"""Serve one engine over HTTP: `radixlm serve [flags]` / `python -m radixlm.launch_server [flags]`."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any, Optional

from radixlm.config.cli_args import parse_args
from radixlm.config.server_args import ServerArgs

ENGINE_POLL_S = 0.25  # how often the server checks that the engine is alive
GRACE_S = 5.0  # uvicorn's wait for in-flight requests after SIGTERM
DRAIN_S = 3.5  # then requests still running are aborted, so they end cleanly before the grace runs out


def serve(args: ServerArgs) -> None:
    """Start the engine, warm it up, serve until SIGINT/SIGTERM, then shut the engine down.
    Exits non-zero (within ~1 s plus uvicorn's 5 s grace) if the engine dies while serving."""
    import uvicorn

    from radixlm.entrypoints.engine import Engine
    from radixlm.entrypoints.http.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="[radixlm] %(message)s")
    engine = Engine(server_args=args)
    stopping = threading.Event()
    try:
        warm_up(engine, args.dp_size)
        resolved = engine.server_args  # a Hub id's name survives as served_model_name
        name = resolved.served_model_name or _default_name(resolved.model_path)
        app = create_app(engine, name, args.api_key, args.max_payload_size, media_policy(args))
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=args.host, port=args.port, log_level=_uvicorn_level(args), timeout_graceful_shutdown=GRACE_S
            )
        )
        threading.Thread(
            target=_watch, args=(engine, server, app.state.radixlm, stopping), daemon=True, name="radixlm-engine-watch"
        ).start()
        _stop_on_signals(server)
        print(f"radixlm: serving {name!r} on http://{args.host}:{args.port} (ready)", flush=True)
        server.run()
    finally:
        died = engine.death_reason  # read before shutdown(), which ends the scheduler on purpose
        stopping.set()
        engine.shutdown()
    if died:
        sys.exit(f"radixlm: the engine died, server stopped: {died.splitlines()[0]}")


def warm_up(engine: Any, dp_size: int) -> None:
    """One one-token request per data-parallel replica before the server opens, so that no user
    request pays for a replica's first-use work (kernel compiles, allocator growth). Distinct
    one-token prompts match no cached prefix, so the router sends each to the least loaded (or
    next) replica: a batch of `dp_size` reaches every replica once."""
    ids = [[i] for i in range(max(1, dp_size))]
    if engine.server_args.is_embedding:
        engine.encode(input_ids=ids)
    else:
        engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1})


def _watch(engine: Any, server: Any, state: Any, stopping: threading.Event) -> None:
    """Ask uvicorn to stop as soon as the engine is dead (its in-flight requests have already
    been failed; `serve` then exits non-zero). Once uvicorn is stopping, abort the requests
    still running after DRAIN_S so that each ends with finish_reason "abort" (a 200 and a
    final stream event) rather than being cut off when the grace period ends."""
    while not stopping.wait(ENGINE_POLL_S):
        died = engine.death_reason
        if died:
            logging.getLogger(__name__).error("the engine died: %s", died)
            server.should_exit = True
            return
        if server.should_exit:
            if not stopping.wait(DRAIN_S):
                count = state.abort_all()
                logging.getLogger(__name__).warning("shutting down: aborted %d running request(s)", count)
            return


def _stop_on_signals(server: Any) -> None:
    """SIGTERM / SIGINT stop uvicorn gracefully. uvicorn re-raises the signal it caught once it
    has stopped, into the handler that was there before it: with the default one the process
    would die there, before the engine is shut down (leaving the scheduler orphaned)."""

    def handle(sig: int, frame: Any) -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def media_policy(args: ServerArgs) -> Any:
    from radixlm.entrypoints.http.media import MediaPolicy

    return MediaPolicy(args.allowed_local_media_path, args.enable_remote_media)


def _default_name(model_path: str) -> str:
    import os

    return os.path.basename(os.path.normpath(model_path)).removesuffix(".gguf")


def _uvicorn_level(args: ServerArgs) -> str:
    return "info" if args.log_requests else ("warning" if args.log_level == "info" else args.log_level)


def main(argv: Optional[list[str]] = None) -> None:
    from radixlm.model_loader.hub import ModelNotFoundError

    args = parse_args(argv)
    try:
        if args.node_rank > 0:  # SGLang starts every node with launch_server: this one runs ranks only
            from radixlm.distributed.launch import run_worker_node
            from radixlm.model_loader.hub import resolve_server_args

            sys.exit(run_worker_node(resolve_server_args(args)))
        serve(args)
    except ModelNotFoundError as exc:  # a wrong path or Hub id: its message, not a traceback
        sys.exit(f"radixlm: {exc}")


if __name__ == "__main__":
    main()
