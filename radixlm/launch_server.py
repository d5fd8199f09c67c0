"""`python -m radixlm.launch_server [flags]` / `radixlm serve [flags]`: SGLang's flags, one server."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from typing import Any, Optional

from radixlm.server_args import ServerArgs

# SGLang spellings that differ from our field names.
ALIASES = {"tp_size": ["--tp"], "dp_size": ["--dp"]}
HELP = {"model_path": "HF model directory or .gguf file (default: the bundled SmolLM2-135M-Instruct)"}


def build_parser() -> argparse.ArgumentParser:
    """One flag per ServerArgs field (`--field-name`), typed from the dataclass."""
    parser = argparse.ArgumentParser(prog="radixlm serve", description="Serve an LLM over HTTP.")
    hints = typing.get_type_hints(ServerArgs)
    for f in dataclasses.fields(ServerArgs):
        names = [f"--{f.name.replace('_', '-')}"] + ALIASES.get(f.name, [])
        kind = _base_type(hints[f.name])
        if kind is bool:
            parser.add_argument(*names, dest=f.name, action="store_true", default=f.default)
        else:
            parser.add_argument(*names, dest=f.name, type=kind, default=f.default,
                                help=HELP.get(f.name, f"default: {f.default}"))
    return parser


def _base_type(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def parse_args(argv: Optional[list[str]] = None) -> ServerArgs:
    ns = build_parser().parse_args(argv)
    try:
        return ServerArgs(**vars(ns))
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"radixlm: {exc}")


def serve(args: ServerArgs) -> None:
    """Start the engine, warm it up, serve until SIGINT/SIGTERM, then shut the engine down."""
    import uvicorn

    from radixlm.engine import Engine
    from radixlm.server.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="[radixlm] %(message)s")
    engine = Engine(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args)})
    try:
        engine.generate(input_ids=[0], sampling_params={"max_new_tokens": 1})
        name = args.served_model_name or _default_name(args.model_path)
        app = create_app(engine, name, args.api_key, args.max_payload_size)
        print(f"radixlm: serving {name!r} on http://{args.host}:{args.port} (ready)", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level=_uvicorn_level(args),
                    timeout_graceful_shutdown=5)
    finally:
        engine.shutdown()


def _default_name(model_path: str) -> str:
    import os

    return os.path.basename(os.path.normpath(model_path)).removesuffix(".gguf")


def _uvicorn_level(args: ServerArgs) -> str:
    return "info" if args.log_requests else ("warning" if args.log_level == "info" else args.log_level)


def main(argv: Optional[list[str]] = None) -> None:
    serve(parse_args(argv))


if __name__ == "__main__":
    main()
