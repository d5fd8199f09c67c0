"""Native model classes by Hugging Face architecture name, imported lazily."""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger(__name__)

_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("radixlm.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("radixlm.models.llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("radixlm.models.qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("radixlm.models.qwen3", "Qwen3ForCausalLM"),
    "MixtralForCausalLM": ("radixlm.models.mixtral", "MixtralForCausalLM"),
    "Qwen2MoeForCausalLM": ("radixlm.models.qwen2_moe", "Qwen2MoeForCausalLM"),
    "Qwen3MoeForCausalLM": ("radixlm.models.qwen3_moe", "Qwen3MoeForCausalLM"),
    "LlavaForConditionalGeneration": ("radixlm.models.llava", "LlavaForConditionalGeneration"),
    "LlavaNextForConditionalGeneration": ("radixlm.models.llava_next", "LlavaNextForConditionalGeneration"),
    "LlavaLlamaForCausalLM": ("radixlm.models.llava_original", "LlavaLlamaForCausalLM"),
    "Qwen2VLForConditionalGeneration": ("radixlm.models.qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "Qwen2_5_VLForConditionalGeneration": ("radixlm.models.qwen2_vl", "Qwen2_5_VLForConditionalGeneration"),
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
        f"no native implementation for architectures {architectures}; supported: {supported_architectures()}; "
        "model_impl='transformers' (or 'auto') serves it through the Transformers backend"
    )


def resolve_model_impl(architectures: list[str], model_impl: str) -> str:
    """`radixlm` or `transformers`, logging the choice and why. `auto`: native when one exists.
    ValueError when `radixlm` is asked for an architecture with no native implementation."""
    native = [arch for arch in architectures or [] if arch in _ARCHITECTURES]
    if model_impl == "radixlm" and not native:
        raise ValueError(
            f"model_impl='radixlm' but there is no native implementation for {architectures} (supported: "
            f"{supported_architectures()}); model_impl='transformers' or 'auto' serves it through the "
            "Transformers backend"
        )
    if model_impl == "transformers":
        logger.info("model_impl=transformers: serving %s through the Transformers backend (requested)", architectures)
        return "transformers"
    if native:
        logger.info("model_impl=%s: using radixlm's native %s", model_impl, native[0])
        return "radixlm"
    logger.info("model_impl=auto: no native implementation for %s; using the Transformers backend", architectures)
    return "transformers"
