"""A tiny random LLaVA in the original checkpoint layout (`LlavaLlamaForCausalLM`: Llama config
with `mm_*` fields, `model.mm_projector.{0,2}.*`, no vision tower), the local CLIP directory
its `mm_vision_tower` names, a llava-hf style tokenizer (`<image>` = the first id past the
vocabulary), and the equivalent HF `LlavaForConditionalGeneration` built from the same weights."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.tiny_llava import IMAGE_SIZE, IMAGE_TOKEN, PATCH
from helpers.tiny_models import TINY_TEXT

EXTRA_ROWS = 8  # the HF reference's embedding rows past the original vocabulary (the image id among them)


@dataclass
class OriginalLlava:
    model_dir: str  # the original layout (config.json + model.safetensors + tokenizer without <image>)
    tokenizer_dir: str  # the --tokenizer-path one serves it with
    clip_dir: str  # the vision tower (a CLIPModel directory with its image processor)
    hf: Any  # the equivalent HF LlavaForConditionalGeneration (float32, eval)
    vocab_size: int  # the original vocabulary; <image> has this id


def make_original_llava(root: str | Path, base_tokenizer_dir: str, **mm_fields: Any) -> OriginalLlava:
    """Build and save all three directories (seed 0); `mm_fields` override the config's
    `mm_*` / `image_aspect_ratio` entries (defaults: LLaVA-1.5's)."""
    import torch
    from transformers import AutoTokenizer, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    root = Path(root)
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    vocab = len(tokenizer)
    text = _text_config(vocab + EXTRA_ROWS)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        initializer_range=0.15,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab, vision_feature_layer=-2)
    torch.manual_seed(0)
    hf = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    clip_dir = _save_clip(root / "clip", hf, vision)
    model_dir = root / "llava_original"
    tokenizer.save_pretrained(str(model_dir))
    _save_original(model_dir, hf, text, vocab, clip_dir, mm_fields)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == vocab
    tokenizer_dir = root / "llava_hf_tokenizer"
    tokenizer.save_pretrained(str(tokenizer_dir))
    return OriginalLlava(str(model_dir), str(tokenizer_dir), clip_dir, hf, vocab)


def _text_config(vocab_size: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, **TINY_TEXT)


def _save_clip(out: Path, hf: Any, vision: Any) -> str:
    """A CLIPModel directory whose vision model is `hf`'s vision tower (its text model random)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision.to_dict(), projection_dim=16))
    tower = hf.model.vision_tower
    clip.vision_model.load_state_dict(getattr(tower, "vision_model", tower).state_dict())
    clip.save_pretrained(str(out))
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=crop).save_pretrained(str(out))
    return str(out)


def _save_original(out: Path, hf: Any, text: Any, vocab: int, clip_dir: str, mm_fields: dict) -> None:
    """config.json and model.safetensors as LLaVA's own training code saves them."""
    from safetensors.torch import save_file

    tensors = {}
    for name, tensor in hf.model.language_model.state_dict().items():
        tensors[f"model.{name}"] = tensor
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:vocab]
    tensors["lm_head.weight"] = hf.lm_head.weight[:vocab]
    projector = hf.model.multi_modal_projector
    for ours, theirs in (("linear_1", "0"), ("linear_2", "2")):
        for kind in ("weight", "bias"):
            tensors[f"model.mm_projector.{theirs}.{kind}"] = getattr(getattr(projector, ours), kind)
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(out / "model.safetensors"))
    raw = {k: v for k, v in text.to_dict().items() if k not in ("architectures", "model_type")}
    raw.update(
        architectures=["LlavaLlamaForCausalLM"],
        model_type="llava",
        vocab_size=vocab,
        mm_vision_tower=clip_dir,
        mm_hidden_size=32,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio="pad",
    )
    raw.update(mm_fields)
    (out / "config.json").write_text(json.dumps(raw, indent=1))


def hf_original_greedy(model: OriginalLlava, ids: list[int], images: list[bytes], new_tokens: int) -> list[int]:
    """HF `generate` (greedy, float32) on `ids` (placeholders expanded), the images padded to a
    square and processed by the CLIP directory's processor as LLaVA-1.5 does; the reference's
    rows past the original vocabulary are never chosen."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import LlavaImageProcessor

    kwargs = {}
    if images:
        processor = LlavaImageProcessor.from_pretrained(model.clip_dir, do_pad=True)
        decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        pixels = processor(images=decoded, return_tensors="np")["pixel_values"]
        kwargs["pixel_values"] = torch.from_numpy(np.asarray(pixels))
    with torch.no_grad():
        out = model.hf.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=2,
            suppress_tokens=list(range(model.vocab_size, model.vocab_size + EXTRA_ROWS)),
            **kwargs,
        )
    return out[0, len(ids) :].tolist()
