"""Qwen2-VL pixels as uint8 codes (`radixlm.multimodal.pixel_codes`): the HF processor's float32
patches round-trip bitwise (numpy and torch), arrays that are not exactly representable are
refused, and the front's Qwen2-VL inputs carry codes with content hashes that still separate
different images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from radixlm.multimodal.pixel_codes import channel_affine, decode_numpy, decode_torch, decode_torch_batch, encode


@pytest.fixture(scope="module")
def processor():  # noqa: ANN201 - an HF image processor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=256, max_pixels=40000, patch_size=4, merge_size=2, temporal_patch_size=2)


def patches(processor, seed: int, size: tuple[int, int]) -> np.ndarray:  # noqa: ANN001
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    out = processor(images=[Image.fromarray(pixels)], return_tensors="np")["pixel_values"]
    return np.asarray(out, dtype=np.float32)


SIZES = [(56, 56), (50, 123), (9, 300)]


@pytest.mark.parametrize("size", SIZES)
def test_processor_pixels_round_trip_bitwise(processor, size: tuple[int, int]) -> None:  # noqa: ANN001
    values = patches(processor, 1, size)
    coded = encode(values, channel_affine(processor))
    assert coded is not None
    codes, table = coded
    assert codes.dtype == np.uint8 and codes.shape == values.shape and table.shape == (3, 256)
    assert np.array_equal(decode_numpy(codes, table), values)
    assert torch.equal(decode_torch(codes, table, torch.device("cpu")), torch.from_numpy(values))


def test_batch_decode_equals_each_image_decoded_in_order(processor) -> None:  # noqa: ANN001
    """Images of different sizes (row counts) and tables: one batched decode is the per-image
    decodes concatenated, bitwise."""
    coded = [encode(patches(processor, seed, size), channel_affine(processor)) for seed, size in enumerate(SIZES)]
    codes, tables = [c for c, _ in coded], [t for _, t in coded]
    assert not np.array_equal(tables[0], tables[1]) or not np.array_equal(codes[0][:4], codes[1][:4])
    want = torch.cat([torch.from_numpy(decode_numpy(c, t)) for c, t in coded])
    assert torch.equal(decode_torch_batch(codes, tables, torch.device("cpu")), want)
    assert torch.equal(
        decode_torch_batch(codes[1:2], tables[1:2], torch.device("cpu")), want[codes[0].shape[0] :][: codes[1].shape[0]]
    )


def test_levels_outside_the_sampled_rows_with_other_arithmetic_still_encode(processor) -> None:  # noqa: ANN001
    """A processor whose values differ from transformers' arithmetic (here by one float32 ulp)
    at levels only in rows `encode` does not sample: the candidate table fails its check and
    the table is built from every value instead, still bitwise."""
    affine = channel_affine(processor)
    mean, std, scale = affine
    ramp = (np.arange(256, dtype=np.float64) * scale).astype(np.float32)
    exact = ((ramp[None, :] - mean.astype(np.float32)[:, None]) / std.astype(np.float32)[:, None]).astype(np.float32)
    table = np.nextafter(exact, np.float32(np.inf))  # one ulp up: still rounds to the same level
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 128, size=(64, 3 * 16), dtype=np.uint8)
    codes[1::2] += 128  # odd rows only: never among the sampled ones
    values = decode_numpy(codes, table)
    coded = encode(values, affine)
    assert coded is not None and np.array_equal(coded[0], codes)
    assert np.array_equal(decode_numpy(*coded), values)


def test_inexact_arrays_are_refused(processor) -> None:  # noqa: ANN001
    values = patches(processor, 2, (56, 56))
    noisy = values + np.random.default_rng(3).random(values.shape, dtype=np.float32) * 1e-3
    assert encode(noisy, channel_affine(processor)) is None
    assert encode(values.astype(np.float64), channel_affine(processor)) is None
    assert encode(values[:, :-1], channel_affine(processor)) is None  # columns not a multiple of channels


def test_front_sends_codes_with_separating_hashes(processor) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from radixlm.multimodal.processor import ImagePreprocessor

    config = SimpleNamespace(
        model_type="qwen2_vl",
        image_token_id=5,
        vision_config=SimpleNamespace(spatial_merge_size=2),
        text_config=SimpleNamespace(vocab_size=100),
    )
    front = ImagePreprocessor(processor, config, max_images=4)
    assert front.merge == 2 and front.affine is not None
    a, b = (np.random.default_rng(s).integers(0, 256, size=(40, 40, 3), dtype=np.uint8) for s in (4, 5))
    first = front.prepare([1, 5, 2], [Image.fromarray(a)]).images[0]
    again = front.prepare([1, 5, 2], [Image.fromarray(a.copy())]).images[0]
    other = front.prepare([1, 5, 2], [Image.fromarray(b)]).images[0]
    assert first.pixel_values.dtype == np.uint8 and first.pixel_table is not None
    expected = processor(images=[Image.fromarray(a)], return_tensors="np")["pixel_values"]
    assert np.array_equal(decode_numpy(first.pixel_values, first.pixel_table), expected)
    assert first.pad_value == again.pad_value != other.pad_value
