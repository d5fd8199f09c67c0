"""SGLang flag spellings that are not one-to-one field names: deprecated aliases that warn, and
flags accepted as no-ops because their setting does not exist here. `cli_args.add_server_args`
adds them beside the fields' own flags; each prints one line to stderr when used."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

# Deprecated SGLang flag -> the ServerArgs field it sets (and whose flag replaces it).
DEPRECATED = {"--nccl-init": "dist_init_addr"}
# SGLang flags that select something radixlm does not have -> why ignoring them is right.
NO_OPS = {
    "--disable-flashinfer": "radixlm has no FlashInfer backend (attention runs on Triton on CUDA, "
    "torch-native elsewhere; see --attention-backend)",
}


class _DeprecatedAlias(argparse.Action):
    """Stores into the field's dest like the new flag, after a one-line notice."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Optional[str] = None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"radixlm: {option_string} is deprecated, use {new} (same meaning)", file=sys.stderr)
        setattr(namespace, self.dest, values)


class _NoOp(argparse.Action):
    """Takes no value, sets nothing, says once why the flag changes nothing."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Optional[str] = None) -> None:
        print(f"radixlm: {option_string} accepted and ignored: {NO_OPS[option_string]}", file=sys.stderr)


def add_sglang_spellings(parser: argparse.ArgumentParser | Any, exclude: frozenset[str] = frozenset()) -> None:
    """Add the deprecated aliases (for fields not in `exclude`) and the accepted no-op flags."""
    for flag, field in DEPRECATED.items():
        if field not in exclude:
            parser.add_argument(
                flag, dest=field, action=_DeprecatedAlias, default=argparse.SUPPRESS, help=f"deprecated: {field}"
            )
    for flag, why in NO_OPS.items():
        parser.add_argument(flag, action=_NoOp, help=f"accepted, no effect: {why}")
