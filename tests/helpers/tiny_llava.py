"""A tiny random LLaVA-1.5 directory (CLIP vision tower, tiny Llama, CLIPImageProcessor),
generated test images, and the HF reference generation with the same pixel inputs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

from helpers.tiny_models import TINY_TEXT

IMAGE_SIZE, PATCH = 28, 7  # 16 placeholder tokens per image
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2
IMAGE_TOKEN = "<image>"
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


PINPOINTS = [[28, 56], [56, 28], [56, 56]]


def make_tiny_llava(tmp_dir: str | Path, tokenizer_dir: str, next_: bool = False) -> str:
    """Save the model (seed 0, float32), the tokenizer with an `<image>` special token and a
    small chat template, and a 28x28 CLIPImageProcessor; returns the directory. `next_`:
    LLaVA-NeXT instead, with 28-pixel tiles on grids of `PINPOINTS`."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    out = Path(tmp_dir) / ("tiny_llava_next" if next_ else "tiny_llava")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = LLAVA_TEMPLATE
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text = LlamaConfig(vocab_size=image_id + 8, **TINY_TEXT)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=32,
        initializer_range=0.15,
    )
    common = dict(vision_config=vision, text_config=text, image_token_index=image_id, vision_feature_layer=-2)
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if next_:
        from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        config = LlavaNextConfig(**common, image_grid_pinpoints=PINPOINTS)
        config.architectures = ["LlavaNextForConditionalGeneration"]
        model_cls = LlavaNextForConditionalGeneration
        processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size=crop, image_grid_pinpoints=PINPOINTS
        )
    else:
        config = LlavaConfig(**common)
        config.architectures = ["LlavaForConditionalGeneration"]
        model_cls = LlavaForConditionalGeneration
        processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=crop)
    torch.manual_seed(0)
    model = model_cls(config).to(torch.float32).eval()
    if next_:
        with torch.no_grad():
            model.model.image_newline.normal_(0, 1.0)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return str(out)


def make_image(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A PNG of random colours (distinct per seed)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def huge_png_header(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG whose header claims `width` x `height` pixels (its data is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def hf_llava_greedy(path: str, ids: list[int], images: list[bytes], new_tokens: int) -> list[int]:
    """HF `generate` (greedy, float32) on `ids` (placeholders already expanded) and the images
    preprocessed by the directory's image processor."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    kwargs = {}
    if images:
        decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        processed = processor(images=decoded, return_tensors="np")
        kwargs["pixel_values"] = torch.from_numpy(processed["pixel_values"])
        if "image_sizes" in processed:
            kwargs["image_sizes"] = torch.from_numpy(np.asarray(processed["image_sizes"]))
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=2,
            **kwargs,
        )
    return out[0, len(ids) :].tolist()


def expand(ids: list[int], image_id: int, counts: list[int] | None = None) -> list[int]:
    """`ids` with image placeholder k repeated `counts[k]` times (default TOKENS_PER_IMAGE each):
    HF's input form."""
    out: list[int] = []
    k = 0
    for t in ids:
        if t == image_id:
            out += [t] * (counts[k] if counts else TOKENS_PER_IMAGE)
            k += 1
        else:
            out.append(t)
    return out
