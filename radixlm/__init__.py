"""radixlm: a fast LLM serving engine with a radix-tree prefix cache, and a language for LLM programs."""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radixlm.config.server_args import ServerArgs
    from radixlm.entrypoints.engine import Engine
    from radixlm.sampling.sampling_params import SamplingParams

# Imported on first use, so `import radixlm` (and the frontend language) does not load torch.
_RUNTIME_NAMES = {
    "Engine": "radixlm.entrypoints.engine",
    "SamplingParams": "radixlm.sampling.sampling_params",
    "ServerArgs": "radixlm.config.server_args",
}

# The frontend language (`import radixlm as sgl`), imported on first use of one of its names.
_LANG_NAMES = frozenset(
    (
        "function",
        "gen",
        "gen_int",
        "gen_string",
        "select",
        "image",
        "system",
        "user",
        "assistant",
        "system_begin",
        "system_end",
        "user_begin",
        "user_end",
        "assistant_begin",
        "assistant_end",
        "set_default_backend",
        "get_default_backend",
        "flush_cache",
        "get_server_info",
        "RuntimeEndpoint",
        "EngineBackend",
        "OpenAI",
        "Anthropic",
        "ProgramState",
        "ProgramStateGroup",
        "Function",
        "LangError",
        "ProgramError",
        "BackendError",
        "UnsupportedFeatureError",
    )
)

__all__ = ["Engine", "SamplingParams", "ServerArgs", *sorted(_LANG_NAMES)]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _RUNTIME_NAMES:
        return getattr(importlib.import_module(_RUNTIME_NAMES[name]), name)
    if name in _LANG_NAMES:
        import radixlm.lang

        return getattr(radixlm.lang, name)
    raise AttributeError(f"module 'radixlm' has no attribute {name!r}")
