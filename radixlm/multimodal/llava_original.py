"""The original LLaVA checkpoint layout (`LlavaLlamaForCausalLM`: a Llama config with `mm_*`
fields, `model.mm_projector.*` tensors, and no vision tower: `mm_vision_tower` names a CLIP
checkpoint). Read into the `LlavaConfig` the native LLaVA model runs, with the CLIP directory
found locally (a path, a folder of the model, or a Hub id already in the local cache); the
image processor is that directory's, padding images to a square where `image_aspect_ratio` is
`pad`. The image token is the first id past the language vocabulary (`<image>` of the llava-hf
tokenizers that `--tokenizer-path` names)."""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterator, Optional

ORIGINAL_LLAVA = ("LlavaLlamaForCausalLM",)
_TEXT_PARTS = ("text_model.", "text_projection.")
_NOT_TEXT = ("architectures", "model_type", "_name_or_path", "transformers_version", "torch_dtype", "dtype")


def read_original_llava(model_path: str) -> Optional[Any]:
    """The LlavaConfig of an original-layout LLaVA directory; None for any other directory.
    ValueError naming the field for what radixlm does not run (another projector, image
    start/end tokens, any-resolution images, another language model's layout) and for a
    vision tower not available locally."""
    with open(os.path.join(model_path, "config.json")) as f:
        raw = json.load(f)
    architectures = list(raw.get("architectures") or [])
    if not set(architectures) & set(ORIGINAL_LLAVA):
        _refuse_other_original_layouts(architectures)
        return None
    _check_supported(raw)
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision_dir = vision_tower_dir(model_path, raw.get("mm_vision_tower") or raw.get("vision_tower") or "")
    text_fields = {k: v for k, v in raw.items() if k not in _NOT_TEXT and not k.startswith("mm_")}
    text = LlamaConfig(**text_fields)
    select = raw.get("mm_vision_select_feature", "patch")
    config = LlavaConfig(
        text_config=text,
        vision_config=CLIPVisionConfig.from_pretrained(vision_dir),
        image_token_index=text.vocab_size,
        vision_feature_layer=raw.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if select == "patch" else "full",
        projector_hidden_act="gelu",
    )
    config.architectures = list(ORIGINAL_LLAVA)
    config.mm_vision_tower_dir = vision_dir
    config.image_aspect_ratio = raw.get("image_aspect_ratio", "square")
    return config


def _refuse_other_original_layouts(architectures: list[str]) -> None:
    """The original layouts over other language models (`LlavaMistralForCausalLM`, ...), which
    transformers cannot read either, are refused by name."""
    others = [a for a in architectures if a.startswith("Llava") and a.endswith("ForCausalLM")]
    if others:
        raise ValueError(
            f"original LLaVA checkpoint layout {others[0]} is not supported (supported: {list(ORIGINAL_LLAVA)}); "
            "serve its llava-hf conversion (LlavaForConditionalGeneration / LlavaNextForConditionalGeneration)"
        )


def _check_supported(raw: dict) -> None:
    checks = (
        ("mm_projector_type", raw.get("mm_projector_type", "linear"), ("mlp2x_gelu",)),
        ("mm_use_im_start_end", bool(raw.get("mm_use_im_start_end", False)), (False,)),
        ("mm_vision_select_feature", raw.get("mm_vision_select_feature", "patch"), ("patch", "cls_patch")),
        ("image_aspect_ratio", raw.get("image_aspect_ratio", "square"), ("pad", "square")),
    )
    for field, value, allowed in checks:
        if value not in allowed:
            raise ValueError(
                f"original LLaVA checkpoint (LlavaLlamaForCausalLM) with {field}={value!r} is not supported "
                f"(supported: {list(allowed)}); serve its llava-hf conversion (LlavaForConditionalGeneration) instead"
            )


def vision_tower_dir(model_path: str, name: str) -> str:
    """The local directory of the CLIP checkpoint `name` (mm_vision_tower)."""
    for candidate in (name, os.path.join(model_path, name)):
        if name and os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    if name.count("/") == 1 and not name.startswith(("/", ".")):
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(name, local_files_only=True)
        except Exception:  # not in the local cache (no download here: start-up stays offline)
            pass
    raise ValueError(
        f"the original LLaVA layout (LlavaLlamaForCausalLM) loads its vision tower from mm_vision_tower={name!r}, "
        "which is not available locally: download it first (`huggingface-cli download <id>`), or set "
        f"mm_vision_tower in {os.path.join(model_path, 'config.json')} to a local CLIP directory; or serve the "
        "llava-hf conversion of the model (LlavaForConditionalGeneration, e.g. llava-hf/llava-1.5-7b-hf)"
    )


def original_image_processor(config: Any) -> Any:
    """The vision tower's CLIP image processor; LLaVA's `pad` pads each image to a square of
    the mean colour first (transformers' LLaVA processor with `do_pad`)."""
    from transformers import LlavaImageProcessor

    do_pad = getattr(config, "image_aspect_ratio", "square") == "pad"
    return LlavaImageProcessor.from_pretrained(config.mm_vision_tower_dir, do_pad=do_pad)


def vision_tower_weights(directory: str) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of the CLIP checkpoint's tensors but its text model's (a CLIPModel's
    `vision_model.*`, a CLIPVisionModel's own), from safetensors or else `pytorch_model*.bin`."""
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if files:
        from safetensors import safe_open

        for file in files:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    if not name.startswith(_TEXT_PARTS):
                        yield name, f.get_tensor(name)
        return
    import torch

    for file in sorted(glob.glob(os.path.join(directory, "pytorch_model*.bin"))):
        state = torch.load(file, map_location="cpu", weights_only=True)
        yield from ((n, t) for n, t in state.items() if not n.startswith(_TEXT_PARTS))
