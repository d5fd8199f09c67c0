"""Pure parts of the image path: hash padding, chunk slicing, source parsing, config lifting."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import numpy as np
import pytest

from radixlm.entrypoints.http.image_sources import bare_base64
from radixlm.multimodal.config import prepare_multimodal_config
from radixlm.multimodal.hashing import PAD_RANGE, image_digest, pad_value
from radixlm.multimodal.images import ImageError
from radixlm.multimodal.inputs import ImageInput, ImageSlice, chunk_end, chunk_slices
from radixlm.multimodal.processor import ImagePreprocessor


def test_pad_values_follow_content_and_never_name_a_token() -> None:
    a = np.zeros((3, 4, 4), np.float32)
    b = a.copy()
    b[0, 0, 0] = 1e-6
    assert pad_value(image_digest(a), 100) == pad_value(image_digest(a.copy()), 100)
    assert pad_value(image_digest(a), 100) != pad_value(image_digest(b), 100)
    assert image_digest(a) != image_digest(a.reshape(3, 2, 8))  # same bytes, other shape
    assert 100 <= pad_value(image_digest(b), 100) < 100 + PAD_RANGE


def test_chunk_slices_cut_images_anywhere() -> None:
    px = np.zeros((3, 2, 2), np.float32)
    first, second = ImageInput(px, 2, 16, 1000), ImageInput(px, 20, 16, 1001)
    images = [first, second]
    assert chunk_slices(images, 0, 8, 5) == [ImageSlice(first, 7, 0, 6)]
    assert chunk_slices(images, 8, 24, 0) == [ImageSlice(first, 0, 6, 10), ImageSlice(second, 12, 0, 4)]
    assert chunk_slices(images, 18, 20, 0) == []
    assert chunk_slices(images, 36, 40, 0) == []


def test_chunk_end_moves_before_an_image_it_would_cut() -> None:
    px = np.zeros((3, 2, 2), np.float32)
    images = [ImageInput(px, 10, 16, 1000), ImageInput(px, 30, 16, 1001)]
    assert chunk_end(images, 0, 8) == 8  # before the first image
    assert chunk_end(images, 0, 20) == 10  # inside the first: stop where it starts
    assert chunk_end(images, 0, 28) == 28  # between the images
    assert chunk_end(images, 4, 40, page=4) == 28  # inside the second, a whole number of pages
    assert chunk_end(images, 10, 20) == 20  # the image starts the chunk and outgrows it: cut it
    assert chunk_end(images, 8, 20, page=4) == 20  # less than a page before the image: cut it
    assert chunk_end(images, 12, 20) == 20  # the chunk starts inside the image
    assert chunk_end(None, 0, 20) == 20


def test_bare_base64_is_told_from_paths_and_urls() -> None:
    raw = bytes(range(40))
    assert bare_base64(base64.b64encode(raw).decode()) == raw
    for text in ("/tmp/images/cat.png", "data:image/png;base64,AAAA", "https://x/y", "abc"):
        assert bare_base64(text) is None


def test_unsupported_vision_architecture_is_named() -> None:
    config = SimpleNamespace(vision_config=object(), architectures=["Idefics3ForConditionalGeneration"])
    with pytest.raises(ValueError, match="Idefics3ForConditionalGeneration.*not supported"):
        prepare_multimodal_config(config)


def test_language_fields_are_lifted_from_text_config() -> None:
    text = SimpleNamespace(vocab_size=7, num_hidden_layers=2, eos_token_id=1)
    config = SimpleNamespace(
        vision_config=object(), text_config=text, architectures=["LlavaForConditionalGeneration"], eos_token_id=None
    )
    prepared = prepare_multimodal_config(config)
    assert (prepared.vocab_size, prepared.num_hidden_layers, prepared.eos_token_id) == (7, 2, 1)
    plain = SimpleNamespace(vocab_size=5)
    assert prepare_multimodal_config(plain) is plain


def test_anyres_crop_keeps_the_image_aspect() -> None:
    from radixlm.multimodal.anyres import cropped_shape

    assert cropped_shape((30, 40), 8, 8) == (1, 6, 0, 8)  # wide: rows cut above and below
    assert cropped_shape((40, 20), 8, 8) == (0, 8, 2, 4)  # tall: columns cut left and right
    assert cropped_shape((64, 64), 8, 8) == (0, 8, 0, 8)


def test_image_checks_name_the_problem() -> None:
    from PIL import Image

    from radixlm.multimodal.images import ImageError, check_pixels, decode_image

    with pytest.raises(ImageError, match="image 2 is 100x100 pixels, more than the 9999 allowed"):
        check_pixels(Image.new("RGB", (100, 100)), 2, max_pixels=9999)
    with pytest.raises(ImageError, match="image 0 is not an image"):
        decode_image(b"GIF? no", 0)


def _llava_preprocessor(image_token: int, vocab: int, max_images: int = 4) -> ImagePreprocessor:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=7)
    text = LlamaConfig(vocab_size=vocab, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token)
    crop = {"height": 28, "width": 28}
    return ImagePreprocessor(CLIPImageProcessor(size={"shortest_edge": 28}, crop_size=crop), config, max_images)


def test_prepare_all_equals_prepare_one_by_one_and_names_the_first_bad_prompt() -> None:
    from helpers.tiny_llava import make_image

    prep = _llava_preprocessor(image_token=50, vocab=60)
    ids_list = [[1, 50, 2], [3, 4], [50, 5, 50], [50]]
    sources = [[make_image(1)], [], [make_image(2), make_image(1)], [make_image(3, size=(9, 70))]]
    together = prep.prepare_all(ids_list, sources)
    assert together[1] is None
    for ids, srcs, got in zip(ids_list, sources, together):
        if srcs:
            want = prep.prepare(ids, srcs)
            assert (got.input_ids, got.check_ids) == (want.input_ids, want.check_ids)
            assert [img.pad_value for img in got.images] == [img.pad_value for img in want.images]
    assert together[0].images[0].pad_value == together[2].images[1].pad_value  # same image, same pad
    bad = [[make_image(1)], [], [make_image(2), b"not an image"], [b"also bad"]]
    with pytest.raises(ImageError, match="image 1 is not an image"):  # prompt 2's, not prompt 3's image 0
        prep.prepare_all(ids_list, bad)


def test_an_image_token_past_the_vocabulary_is_checked_as_a_text_id() -> None:
    from helpers.tiny_llava import make_image

    prep = _llava_preprocessor(image_token=60, vocab=60)  # original LLaVA: <image> is the first id past it
    out = prep.prepare([1, 60, 2], [make_image(1)])
    assert out.check_ids == [1] + [0] * 16 + [2]
    assert all(60 <= t for t in out.input_ids[1:17])
