"""Hugging Face Hub model IDs (`--model-path org/name`) resolved to a local snapshot directory.

A path that exists is used as it is. Anything else that reads as a repo id goes through
`huggingface_hub`: the local cache first (so a pre-filled cache works with no network, and
`HF_HUB_OFFLINE=1` never connects), then a download of what serving needs (config, tokenizer
files, safetensors weights, or `pytorch_model*.bin` when the repo has no safetensors).
`huggingface_hub` itself reads the token (`HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN` or the saved
login), the cache location (`HF_HOME`, `HF_HUB_CACHE`) and the offline switch from the
environment; this module reads no environment variable itself.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any, Optional

from radixlm.config.server_args import ServerArgs

METADATA_PATTERNS = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py"]
SAFETENSORS_PATTERNS = ["*.safetensors"]
BIN_PATTERNS = ["pytorch_model*.bin"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelNotFoundError(FileNotFoundError):
    """Neither a local path nor a Hub repo that is cached or reachable; the message says why."""


def looks_like_repo_id(path: str) -> bool:
    """True for `name` or `org/name` spelled as the Hub allows (no `..`, no absolute path)."""
    return bool(_REPO_ID.match(path)) and ".." not in path and not path.endswith(".gguf")


def resolve_server_args(args: ServerArgs) -> ServerArgs:
    """`args` with `model_path` and `tokenizer_path` turned into local paths (unchanged when they
    exist); a Hub id keeps its name as `served_model_name` unless one was given. Raises
    ModelNotFoundError naming the path and the reason when one cannot be resolved."""
    model_path = resolve_model_path(args.model_path, args.revision)
    tokenizer_path = args.tokenizer_path
    if tokenizer_path is not None:
        tokenizer_path = resolve_model_path(tokenizer_path, args.revision, weights=False)
    if model_path == args.model_path and tokenizer_path == args.tokenizer_path:
        return args
    name = args.served_model_name
    if name is None and model_path != args.model_path:
        name = args.model_path
    return dataclasses.replace(args, model_path=model_path, tokenizer_path=tokenizer_path, served_model_name=name)


def resolve_model_path(
    path: str, revision: Optional[str] = None, weights: bool = True, cache_dir: Optional[str] = None
) -> str:
    """A local directory or file for `path`: `path` itself when it exists, else the snapshot of Hub
    repo `path` at `revision` (default branch when None), from the cache when it holds one with a
    config (and weights, when `weights`), else downloaded. Raises ModelNotFoundError otherwise."""
    expanded = os.path.expanduser(path)
    if os.path.exists(expanded):
        return expanded
    if not looks_like_repo_id(path):
        raise ModelNotFoundError(
            f"model path {path!r} does not exist; expected a Hugging Face model directory "
            "(config.json, *.safetensors, tokenizer files), a .gguf file or a Hub model id (org/name)"
        )
    cached = _cached_snapshot(path, revision, cache_dir)
    if cached is not None and (not weights or has_weights(cached)):
        return cached
    return _download(path, revision, weights, cache_dir)


def has_weights(directory: str) -> bool:
    """Whether `directory` holds a checkpoint we can load (safetensors or pytorch_model*.bin)."""
    return any(glob.glob(os.path.join(directory, p)) for p in SAFETENSORS_PATTERNS + BIN_PATTERNS)


def _cached_snapshot(repo_id: str, revision: Optional[str], cache_dir: Optional[str]) -> Optional[str]:
    """The cached snapshot directory of `repo_id` at `revision`, or None (no network use)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None
    return folder if os.path.isfile(os.path.join(folder, "config.json")) or _has_tokenizer(folder) else None


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, n)) for n in ("tokenizer.json", "tokenizer_config.json"))


def _download(repo_id: str, revision: Optional[str], weights: bool, cache_dir: Optional[str]) -> str:
    """Config and tokenizer files plus safetensors weights (or .bin when there are none)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ModelNotFoundError(
            f"model path {path_and_revision(repo_id, revision)} is not a local path and is not in the "
            f"Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: "
            "download it first (`hf download`) or unset HF_HUB_OFFLINE"
        )
    patterns = METADATA_PATTERNS + (SAFETENSORS_PATTERNS if weights else [])
    folder = _snapshot(repo_id, revision, patterns, cache_dir)
    if weights and not has_weights(folder):
        folder = _snapshot(repo_id, revision, METADATA_PATTERNS + BIN_PATTERNS, cache_dir)
    return folder


def _snapshot(repo_id: str, revision: Optional[str], patterns: list[str], cache_dir: Optional[str]) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir)
    except Exception as exc:  # repo missing, gated without a token, revision unknown, no network
        raise ModelNotFoundError(
            f"model path {path_and_revision(repo_id, revision)} is neither a local path nor a Hugging Face "
            f"repo that is cached or reachable ({type(exc).__name__}: {_first_line(exc)}); for a gated "
            "repo set HF_TOKEN"
        ) from exc


def path_and_revision(repo_id: str, revision: Optional[str]) -> str:
    return f"{repo_id!r}" + (f" (revision {revision!r})" if revision else "")


def _first_line(exc: Any) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
