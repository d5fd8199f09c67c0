"""The front's image path for a served vision-language model: sources → checked images →
pixel values from the model's own HF image processor → a prompt whose image placeholders are
expanded to one token per embedding row and padded with the image's hash id."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from radixlm.multimodal.anyres import anyres_token_count
from radixlm.multimodal.config import (
    image_chat_marker,
    image_placeholder_text,
    image_token_id,
    is_anyres,
    is_dynamic_resolution,
    is_multimodal,
    tokens_per_image,
)
from radixlm.multimodal.hashing import image_digest, pad_value
from radixlm.multimodal.images import ImageError, check_pixels, decode_image, engine_image_bytes
from radixlm.multimodal.inputs import ImageInput
from radixlm.multimodal.llava_original import original_image_processor
from radixlm.multimodal.pixel_codes import channel_affine, encode

_PREP_THREADS = min(8, os.cpu_count() or 1)


@dataclass
class PreparedPrompt:
    """`check_ids`: the expanded prompt with the placeholder token id, or id 0 where that id is
    past the language vocabulary (what the runtime's limits are checked against); `input_ids`:
    the same with each image's span holding its pad id (what the scheduler and its radix tree
    see); `images` in prompt order."""

    check_ids: list[int]
    input_ids: list[int]
    images: list[ImageInput]


class ImagePreprocessor:
    """Built once per Engine for a vision model; `prepare` is pure apart from the HF processor.
    Owns a pool of up to `_PREP_THREADS` threads (`submit`, `prepare_all`; the HF processors'
    array work releases the GIL), ended by `close`."""

    def __init__(self, processor: Any, config: Any, max_images: int) -> None:
        self.processor = processor
        self.config = config
        self.token_id = image_token_id(config)
        self.merge = config.vision_config.spatial_merge_size if is_dynamic_resolution(config) else None
        fixed = self.merge is None and not is_anyres(config)
        self.tokens_per_image = tokens_per_image(config) if fixed else None
        self.vocab_size = config.text_config.vocab_size
        self.check_id = self.token_id if self.token_id < self.vocab_size else 0
        self.max_images = max_images
        self.affine = channel_affine(processor) if self.merge is not None else None  # Qwen2-VL: pixel codes
        self._pool = ThreadPoolExecutor(_PREP_THREADS, thread_name_prefix="radixlm-image")  # threads start on use

    @classmethod
    def for_model(cls, model_path: str, config: Any, max_images: int) -> "ImagePreprocessor | None":
        """None for a text-only model; else the model directory's HF image processor (the
        vision tower's for the original LLaVA layout)."""
        if not is_multimodal(config):
            return None
        if getattr(config, "mm_vision_tower_dir", None):
            return cls(original_image_processor(config), config, max_images)
        from transformers import AutoImageProcessor

        return cls(AutoImageProcessor.from_pretrained(model_path), config, max_images)

    def chat_marker(self, tokenizer: Any) -> str:
        """The text a chat message's image part renders as (one placeholder token inside)."""
        return image_chat_marker(self.config, tokenizer)

    def placeholder_text(self, tokenizer: Any) -> str:
        """The text one image takes in a prompt (`sgl.image` writes it; one placeholder token inside)."""
        return image_placeholder_text(self.config, tokenizer)

    def prepare(self, ids: list[int], sources: list[Any]) -> PreparedPrompt:
        """Decode and preprocess `sources` (ImageError naming a bad one) and expand each
        placeholder of `ids`; their counts must agree."""
        if len(sources) > self.max_images:
            raise ImageError(
                f"the request has {len(sources)} images; this server takes at most {self.max_images} "
                "per request (--max-images-per-request)"
            )
        places = [i for i, t in enumerate(ids) if t == self.token_id]
        if len(places) != len(sources):
            raise ImageError(
                f"the prompt has {len(places)} image placeholders (token id {self.token_id}) for {len(sources)} images"
            )
        pixels = self._pixels(sources)
        check, padded, images = [], [], []
        prev = 0
        for place, (values, size, grid) in zip(places, pixels):
            check += ids[prev:place]
            padded += ids[prev:place]
            images.append(self._hashed_input(values, len(padded), size, grid))
            count = images[-1].length
            check += [self.check_id] * count
            padded += [images[-1].pad_value] * count
            prev = place + 1
        return PreparedPrompt(check + ids[prev:], padded + ids[prev:], images)

    def submit(self, ids: list[int], sources: list[Any]) -> Future:
        """`prepare(ids, sources)` on the pool: a future of its PreparedPrompt (or ImageError)."""
        return self._pool.submit(self.prepare, ids, sources)

    def prepare_all(self, ids_list: list[list[int]], sources_list: list[list[Any]]) -> list[Optional[PreparedPrompt]]:
        """`prepare` of each prompt that has images (None for one without); the prompts of a
        batch are prepared on the pool. The first failing prompt's ImageError is raised."""
        jobs = [i for i, sources in enumerate(sources_list) if sources]
        if len(jobs) <= 1:
            return [self.prepare(ids, s) if s else None for ids, s in zip(ids_list, sources_list)]
        futures = {i: self.submit(ids_list[i], sources_list[i]) for i in jobs}
        try:
            return [futures[i].result() if i in futures else None for i in range(len(ids_list))]
        finally:
            for future in futures.values():
                future.cancel()

    def close(self) -> None:
        """End the pool's threads; preparations not started are cancelled."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _hashed_input(
        self, values: np.ndarray, offset: int, size: tuple[int, int], grid: Optional[tuple[int, int, int]]
    ) -> ImageInput:
        """The image's input with its content-hash pad id; Qwen2-VL pixels travel as exact
        uint8 codes where they can (hashed in that form: equal codes and table iff equal pixels)."""
        coded = encode(values, self.affine) if self.affine is not None and grid is not None else None
        if coded is None:
            return self._image_input(
                values, offset, pad_value(image_digest(values, grid or ()), self.vocab_size), size, grid
            )
        codes, table = coded
        digest = image_digest(codes, (*grid, image_digest(table).hex()))
        image = self._image_input(codes, offset, pad_value(digest, self.vocab_size), size, grid)
        image.pixel_table = table
        return image

    def _image_input(
        self, values: np.ndarray, offset: int, pad: int, size: tuple[int, int], grid: Optional[tuple[int, int, int]]
    ) -> ImageInput:
        """The image's span: one row per patch (LLaVA-1.5), per anyres feature (LLaVA-NeXT) or
        per merged patch of its grid (Qwen2-VL)."""
        if grid is not None:
            t, h, w = grid
            return ImageInput(values, offset, t * h * w // self.merge**2, pad, size, grid, self.merge)
        count = self.tokens_per_image or anyres_token_count(self.config, size)
        return ImageInput(values, offset, count, pad, size)

    def _pixels(self, sources: list[Any]) -> list[tuple[np.ndarray, tuple[int, int], Optional[tuple[int, int, int]]]]:
        """(pixel values, original (height, width), patch grid or None) per image, each processed
        on its own (so LLaVA-NeXT's tiles are not padded to another image's count)."""
        out = []
        for i, source in enumerate(sources):
            data = engine_image_bytes(source, i)
            if not isinstance(data, bytes):
                check_pixels(data, i)  # a caller's PIL image is checked like decoded bytes
            image = decode_image(data, i) if isinstance(data, bytes) else data.convert("RGB")
            try:
                processed = self.processor(images=[image], return_tensors="np")
            except Exception as exc:  # the HF processor's own refusals (sizes, modes)
                raise ImageError(f"the image processor refused image {i}: {exc}") from None
            grid = None
            if self.merge is not None:  # all patches of the one image, and its patch grid
                values, grid = processed["pixel_values"], tuple(int(x) for x in processed["image_grid_thw"][0])
            else:
                values = processed["pixel_values"][0]
            out.append((np.asarray(values, dtype=np.float32), (image.height, image.width), grid))
        return out
