"""Native model classes by Hugging Face architecture name, imported lazily."""

from __future__ import annotations

import importlib

_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("radixlm.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("radixlm.models.llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("radixlm.models.qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("radixlm.models.qwen3", "Qwen3ForCausalLM"),
}


def supported_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def resolve_model_class(architectures: list[str]) -> type:
    """The native class for the first supported architecture; ValueError naming them otherwise."""
    for arch in architectures or []:
        if arch in _ARCHITECTURES:
            module, name = _ARCHITECTURES[arch]
            return getattr(importlib.import_module(module), name)
    raise ValueError(
        f"no native implementation for architectures {architectures}; supported: {supported_architectures()}"
    )
