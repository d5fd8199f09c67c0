"""A tiny random LLaVA-1.5 directory (CLIP vision tower, tiny Llama, CLIPImageProcessor),
generated test images, and the HF reference generation with the same pixel inputs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

IMAGE_SIZE, PATCH = 28, 7  # 16 placeholder tokens per image
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2
IMAGE_TOKEN = "<image>"
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def make_tiny_llava(tmp_dir: str | Path, tokenizer_dir: str) -> str:
    """Save the model (seed 0, float32), the tokenizer with an `<image>` special token and a
    small chat template, and a 28x28 CLIPImageProcessor; returns the directory."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    out = Path(tmp_dir) / "tiny_llava"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = LLAVA_TEMPLATE
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text = LlamaConfig(
        vocab_size=image_id + 8,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.15,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
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
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id, vision_feature_layer=-2)
    config.architectures = ["LlavaForConditionalGeneration"]
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(str(out))
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
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    kwargs = {}
    if images:
        decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        kwargs["pixel_values"] = torch.from_numpy(processor(images=decoded, return_tensors="np")["pixel_values"])
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


def expand(ids: list[int], image_id: int) -> list[int]:
    """`ids` with every image placeholder repeated TOKENS_PER_IMAGE times (HF's input form)."""
    return [t for i in ids for t in ([i] * TOKENS_PER_IMAGE if i == image_id else [i])]
