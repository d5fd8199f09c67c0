"""A tiny random Qwen2-VL / Qwen2.5-VL directory (4-pixel patches merged 2x2, 2-layer vision
transformer, 2-layer language model with M-RoPE), its image processor, and HF's greedy
reference generation with the same pixel inputs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from helpers.tiny_models import TINY_TEXT

VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"
IMAGE = f"{VISION_START}{IMAGE_PAD}{VISION_END}"  # what the chat template writes for an image part
PATCH, MERGE = 4, 2


def make_tiny_qwen2vl(tmp_dir: str | Path, tokenizer_dir: str, v25: bool = False) -> str:
    """Save the model (seed 0, float32), the tokenizer with the vision special tokens, and a
    Qwen2-VL image processor of 4-pixel patches (between 256 and 4096 pixels per image);
    returns the directory. `v25`: Qwen2.5-VL (window-attention vision transformer)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(tmp_dir) / ("tiny_qwen2_5_vl" if v25 else "tiny_qwen2_vl")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD]})
    ids = tokenizer.convert_tokens_to_ids([VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD])
    text = dict(
        vocab_size=max(ids) + 8,
        **TINY_TEXT,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    )
    common = dict(
        vision_start_token_id=ids[0], image_token_id=ids[1], vision_end_token_id=ids[2], video_token_id=ids[3]
    )
    vision = dict(depth=2, num_heads=4, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=2)
    if v25:
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model

        vision.update(
            hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16, fullatt_block_indexes=[1]
        )
    else:
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model

        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
    config = Config(text_config=text, vision_config=vision, tie_word_embeddings=False, **common)
    config.architectures = [Model.__name__]
    torch.manual_seed(0)
    model = Model(config).to(torch.float32).eval()
    with torch.no_grad():  # a spread of weights, so different images give different answers
        for name, param in model.named_parameters():
            if "visual" in name and "norm" not in name:
                param.normal_(0, 0.2)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    processor = Qwen2VLImageProcessorPil(
        min_pixels=256, max_pixels=4096, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2
    )
    processor.save_pretrained(str(out))
    return str(out)


def tokens_for(image: bytes) -> int:
    """Placeholder rows of one image: its patch grid from the HF processor, merged 2x2."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(
        min_pixels=256, max_pixels=4096, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2
    )
    grid = processor(images=[_decode(image)], return_tensors="np")["image_grid_thw"][0]
    return int(np.prod(grid)) // MERGE**2


def _decode(image: bytes):  # noqa: ANN202 - a PIL image
    from PIL import Image

    return Image.open(io.BytesIO(image)).convert("RGB")


def hf_qwen2vl_greedy(path: str, ids: list[int], images: list[bytes], new_tokens: int) -> list[int]:
    """HF `generate` (greedy, float32) on `ids` (image pads already expanded) with the images
    preprocessed by the directory's image processor; M-RoPE positions by HF's own rope index."""
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    image_id = AutoConfig.from_pretrained(path).image_token_id
    input_ids = torch.tensor([ids])
    kwargs = {}
    if images:
        processed = AutoImageProcessor.from_pretrained(path)(images=[_decode(b) for b in images], return_tensors="pt")
        kwargs = dict(pixel_values=processed["pixel_values"], image_grid_thw=processed["image_grid_thw"])
    kwargs["mm_token_type_ids"] = (input_ids == image_id).to(torch.int32)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=2,
            **kwargs,
        )
    return out[0, len(ids) :].tolist()


def expand(ids: list[int], image_id: int, counts: list[int]) -> list[int]:
    """`ids` with image pad k repeated `counts[k]` times: HF's input form."""
    out: list[int] = []
    k = 0
    for t in ids:
        if t == image_id:
            out += [t] * counts[k]
            k += 1
        else:
            out.append(t)
    return out
