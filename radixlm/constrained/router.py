"""Chooses the backend for each spec: the configured one, or a fallback that enforces what the
configured one would silently ignore. Used by the front (to answer a bad spec with a 400 before
anything runs) and by the scheduler (to compile)."""

from __future__ import annotations

import importlib
import logging
import threading
from collections import OrderedDict
from typing import Any, Union

from radixlm.config.server_args import GRAMMAR_BACKENDS
from radixlm.constrained.base import GrammarBackend, UnsupportedSpec
from radixlm.constrained.spec import GrammarSpec

_CLASSES = {
    "xgrammar": ("radixlm.constrained.xgrammar_backend", "XGrammarBackend"),
    "llguidance": ("radixlm.constrained.llguidance_backend", "LLGuidanceBackend"),
}
_FALLBACKS = {"xgrammar": ("llguidance",), "llguidance": ()}
CACHE_SIZE = 1024
logger = logging.getLogger(__name__)


class GrammarRouter:
    """Invariant: `resolve(spec)` returns a backend whose `check(spec)` passed, or raises the
    ValueError to show the caller; answers are cached per spec (LRU)."""

    def __init__(self, name: str, tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> None:
        if name not in GRAMMAR_BACKENDS:
            raise ValueError(f"grammar_backend must be one of {list(GRAMMAR_BACKENDS)}, got {name!r}")
        self.name = name
        self._args = (tokenizer, vocab_size, eos_ids)
        self._backends: dict[str, Any] = {}
        self._answers: OrderedDict[GrammarSpec, Union[GrammarBackend, ValueError]] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, spec: GrammarSpec) -> GrammarBackend:
        with self._lock:
            answer = self._answers.get(spec)
            if answer is not None:
                self._answers.move_to_end(spec)
        if answer is None:
            answer = self._decide(spec)
            with self._lock:
                self._answers[spec] = answer
                while len(self._answers) > CACHE_SIZE:
                    self._answers.popitem(last=False)
        if isinstance(answer, ValueError):
            raise answer
        return answer

    def _decide(self, spec: GrammarSpec) -> Union[GrammarBackend, ValueError]:
        if self.name == "none":
            return ValueError(f"{spec.kind} needs constrained decoding, which is off (--grammar-backend none)")
        if self._args[0] is None:
            return ValueError(f"{spec.kind} needs a tokenizer (the server runs with --skip-tokenizer-init)")
        refusals: list[str] = []
        for name in (self.name, *_FALLBACKS[self.name]):
            backend = self._backend(name)
            if backend is None:
                continue
            try:
                backend.check(spec)
                logger.debug("%s", routing_reason(spec, name, refusals))
                return backend
            except UnsupportedSpec as exc:
                refusals.append(str(exc))
            except ValueError as exc:
                return UnsupportedSpec("; ".join([*refusals, str(exc)])) if refusals else exc
        if refusals:
            return UnsupportedSpec("; ".join(refusals))
        return ValueError(f"grammar backend {self.name!r} is not installed")

    @property
    def tokenizer_args(self) -> tuple[Any, int, set[int]]:
        """(tokenizer, vocab size, end-of-sequence ids), as every backend gets them."""
        return self._args

    def _backend(self, name: str) -> Any:
        """The backend by name, built on first use; None when its package is not installed."""
        if name not in self._backends:
            module, cls = _CLASSES[name]
            try:
                self._backends[name] = getattr(importlib.import_module(module), cls)(*self._args)
            except ImportError:
                self._backends[name] = None
        return self._backends[name]


def routing_reason(spec: GrammarSpec, name: str, refusals: list[str]) -> str:
    """The debug-log line saying why `spec` goes to backend `name`."""
    digest = spec.text if len(spec.text) <= 80 else spec.text[:77] + "..."
    if not refusals:
        return f"{spec.kind} {digest!r} -> {name}: it enforces every keyword (of the schema as lowered)"
    return f"{spec.kind} {digest!r} -> {name}: fallback, since {'; '.join(refusals)}"
