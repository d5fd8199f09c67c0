"""Command-line flags derived from `ServerArgs`: one `--field-name` per field, typed from the dataclass.

The server (`radixlm serve`, `python -m radixlm.launch_server`), the worker-node launcher and
`bench_offline_throughput` all build their flags here, so a new field is a new flag everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Optional

from radixlm.config.server_args import ServerArgs
from radixlm.config.sglang_flags import add_sglang_spellings

# SGLang spellings that differ from our field names.
ALIASES = {
    "tp_size": ["--tp"],
    "dp_size": ["--dp"],
    "ep_size": ["--ep", "--expert-parallel-size"],
    "model_impl": ["--impl"],
}
HELP = {
    "model_path": "HF model directory or .gguf file (default: the bundled SmolLM2-135M-Instruct)",
    "ep_size": "expert parallelism for MoE models: 1 (default: every rank holds a slice of every expert) "
    "or equal to --tp (each rank holds whole experts, num_experts / tp of them)",
    "quantization": "fp8, awq, gptq, gguf or none (float weights). Default: the checkpoint's quantization_config; "
    "a .gguf file on the CPU keeps its blocks (gguf) when every projection is Q4_0, Q4_1 or Q8_0, and is "
    "dequantized to float otherwise and on GPUs",
    "lora_paths": "LoRA adapters (PEFT directories) to serve: name=path or a path (named by itself), several allowed",
}
# ServerArgs fields that only the HTTP front reads.
HTTP_ONLY = frozenset(
    {"host", "port", "api_key", "max_payload_size", "log_requests", "enable_metrics", "served_model_name"}
)


def add_server_args(
    parser: argparse.ArgumentParser | Any,
    exclude: frozenset[str] = frozenset(),
    defaults: Optional[dict[str, Any]] = None,
) -> None:
    """Add one flag per ServerArgs field not in `exclude` to `parser` (or an argument group);
    `defaults` overrides a field's default for this parser only."""
    defaults = defaults or {}
    hints = typing.get_type_hints(ServerArgs)
    for f in dataclasses.fields(ServerArgs):
        if f.name in exclude:
            continue
        names = [f"--{f.name.replace('_', '-')}"] + ALIASES.get(f.name, [])
        kind = _base_type(hints[f.name])
        default = defaults.get(f.name, f.default)
        if kind is bool:
            parser.add_argument(*names, dest=f.name, action="store_true", default=default)
        elif typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            parser.add_argument(*names, dest=f.name, nargs="+", type=item, default=default, help=HELP.get(f.name))
        else:
            parser.add_argument(
                *names, dest=f.name, type=kind, default=default, help=HELP.get(f.name, f"default: {default}")
            )
    add_sglang_spellings(parser, exclude)


def build_parser() -> argparse.ArgumentParser:
    """The server's parser: every ServerArgs field."""
    parser = argparse.ArgumentParser(prog="radixlm serve", description="Serve an LLM over HTTP.")
    add_server_args(parser)
    return parser


def server_args_from(ns: argparse.Namespace, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The ServerArgs fields among parsed flags (those not in `exclude`), as keyword arguments."""
    return {f.name: getattr(ns, f.name) for f in dataclasses.fields(ServerArgs) if f.name not in exclude}


def parse_args(argv: Optional[list[str]] = None) -> ServerArgs:
    """Parse the server's flags into a validated ServerArgs; a bad value exits with its message."""
    ns = build_parser().parse_args(argv)
    try:
        return ServerArgs(**vars(ns))
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"radixlm: {exc}")


def _base_type(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint
