"""Configs of vision-language models as the runtime reads them.

The runtime sizes the KV pool and checks prompts from a config's language fields
(`vocab_size`, `num_hidden_layers`, ...); a VLM config keeps them in `text_config`.
`prepare_multimodal_config` copies them to the top level once, at load, and refuses every
vision architecture that has no native implementation, naming it."""

from __future__ import annotations

from typing import Any

SUPPORTED_MULTIMODAL = (
    "LlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
    "LlavaLlamaForCausalLM",
)

_LANGUAGE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
)


def is_multimodal(config: Any) -> bool:
    """A config with a vision encoder (a `vision_config`)."""
    return getattr(config, "vision_config", None) is not None


def prepare_multimodal_config(config: Any) -> Any:
    """`config` with its text_config's language fields also at the top level (a text-only config
    is returned as is). ValueError naming the architecture when it is a vision model radixlm
    does not implement."""
    if not is_multimodal(config):
        return config
    architectures = list(getattr(config, "architectures", None) or [])
    if not set(architectures) & set(SUPPORTED_MULTIMODAL):
        raise ValueError(
            f"multimodal architecture {architectures or getattr(config, 'model_type', '?')} is not supported; "
            f"supported vision-language architectures: {list(SUPPORTED_MULTIMODAL)}"
        )
    text = config.text_config
    for name in _LANGUAGE_FIELDS:
        value = getattr(text, name, None)
        if value is not None:
            setattr(config, name, value)
    if getattr(config, "eos_token_id", None) is None:
        config.eos_token_id = getattr(text, "eos_token_id", None)
    return config


def check_model_impl(config: Any, model_impl: str) -> None:
    """ValueError naming the architecture when a vision model is asked of the Transformers
    backend (it serves causal LMs only: images would be silently unusable)."""
    if is_multimodal(config) and model_impl == "transformers":
        raise ValueError(
            f"model_impl='transformers' cannot serve the vision model {list(config.architectures or [])}; "
            "use model_impl='auto' or 'radixlm' (native)"
        )


def image_token_id(config: Any) -> int:
    """The id of the image placeholder token in prompts."""
    value = getattr(config, "image_token_id", None)
    return value if value is not None else config.image_token_index


def is_dynamic_resolution(config: Any) -> bool:
    """Qwen2-VL family: each image's patch grid (hence its placeholder count and M-RoPE
    positions) comes from the image processor (`image_grid_thw`)."""
    return getattr(config.vision_config, "spatial_merge_size", None) is not None


def image_placeholder_text(config: Any, tokenizer: Any) -> str:
    """The text one image takes in a prompt (one placeholder token inside): Qwen2-VL's vision
    span `<|vision_start|><|image_pad|><|vision_end|>`; LLaVA's image token."""
    token = tokenizer.convert_ids_to_tokens(image_token_id(config))
    if is_dynamic_resolution(config):
        start, end = tokenizer.convert_ids_to_tokens([config.vision_start_token_id, config.vision_end_token_id])
        return f"{start}{token}{end}"
    return token


def image_chat_marker(config: Any, tokenizer: Any) -> str:
    """The text an image part of a chat message renders as: Qwen2-VL's chat template puts its
    vision span; LLaVA's put the image token and a newline."""
    text = image_placeholder_text(config, tokenizer)
    return text if is_dynamic_resolution(config) else text + "\n"


def is_anyres(config: Any) -> bool:
    """LLaVA-NeXT: the placeholder count depends on each image's size (`radixlm.multimodal.anyres`)."""
    return getattr(config, "image_grid_pinpoints", None) is not None


def tokens_per_image(config: Any) -> int:
    """Placeholder tokens one LLaVA-1.5 image takes: one per vision patch (plus the CLS token
    when `vision_feature_select_strategy` is `full`)."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0)
