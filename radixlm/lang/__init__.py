"""radixlm's frontend language (SGLang's): `@function` programs of `gen`, `select`, `fork`,
roles and images, run on a backend (`RuntimeEndpoint`, an `Engine`, `OpenAI`, `Anthropic`).

Backends are imported on first use, so `import radixlm.lang` pulls in neither HTTP nor API clients."""

from __future__ import annotations

import importlib
from typing import Any

from radixlm.lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    function,
    gen,
    gen_int,
    gen_string,
    get_default_backend,
    get_server_info,
    image,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from radixlm.lang.errors import BackendError, LangError, ProgramError, UnsupportedFeatureError
from radixlm.lang.program import Function
from radixlm.lang.state import ProgramState, ProgramStateGroup

_LAZY = {
    "RuntimeEndpoint": "radixlm.lang.backend.runtime_endpoint",
    "EngineBackend": "radixlm.lang.backend.engine_backend",
    "OpenAI": "radixlm.lang.backend.openai_backend",
    "Anthropic": "radixlm.lang.backend.anthropic_backend",
    "BaseBackend": "radixlm.lang.backend.base",
}

__all__ = [
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_default_backend",
    "get_server_info",
    "image",
    "select",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "user",
    "user_begin",
    "user_end",
    "BackendError",
    "LangError",
    "ProgramError",
    "UnsupportedFeatureError",
    "Function",
    "ProgramState",
    "ProgramStateGroup",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'radixlm.lang' has no attribute {name!r}")
