"""`LangContext`: where the default backend lives."""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any, Optional

from radixlm.lang.backend.base import BaseBackend
from radixlm.lang.errors import LangError


class LangContext:
    """The language's settings: the default backend, and the backends wrapping in-process
    Engines (one per Engine, so its chat template is derived once).

    `DEFAULT_CONTEXT` below is the language's only module-level mutable state: it exists because
    SGLang programs call the module-level `set_default_backend(backend)`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._default: Optional[BaseBackend] = None
        self._engine_backends: "weakref.WeakKeyDictionary[Any, BaseBackend]" = weakref.WeakKeyDictionary()

    def set_default_backend(self, backend: Any) -> None:
        self._default = None if backend is None else self.as_backend(backend)

    def get_default_backend(self) -> Optional[BaseBackend]:
        return self._default

    def resolve(self, backend: Any = None) -> BaseBackend:
        """`backend` (wrapped if it is an Engine), else the default; raises when there is none."""
        if backend is not None:
            return self.as_backend(backend)
        if self._default is None:
            raise LangError("no backend: pass backend=... or call set_default_backend(RuntimeEndpoint(url)) first")
        return self._default

    def as_backend(self, obj: Any) -> BaseBackend:
        if isinstance(obj, BaseBackend):
            return obj
        engine_module = sys.modules.get("radixlm.entrypoints.engine")  # an Engine exists only if this was imported
        if engine_module is not None and isinstance(obj, engine_module.Engine):
            with self._lock:
                if obj not in self._engine_backends:
                    from radixlm.lang.backend.engine_backend import EngineBackend

                    self._engine_backends[obj] = EngineBackend(obj)
                return self._engine_backends[obj]
        raise TypeError(f"not a backend: {type(obj).__name__} (use RuntimeEndpoint, OpenAI, Anthropic or an Engine)")


DEFAULT_CONTEXT = LangContext()
