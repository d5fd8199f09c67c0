"""M-RoPE: the rotary positions of `radixlm.multimodal.mrope` equal HF's `get_rope_index`
(Qwen2-VL) on whole prompts, any chunking of a prompt gives the same rows, tokens after the
prompt continue at index + delta; `MRotaryEmbedding` rotates q and k as HF's Qwen2-VL rotary
does, and a model-specific class keeps the Triton backend's fused neox rotary away from it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from radixlm.layers.basic import RotaryEmbedding
from radixlm.layers.mrope import MRotaryEmbedding
from radixlm.multimodal.inputs import ImageInput
from radixlm.multimodal.mrope import batch_mrope, mrope_rows, rope_delta

IMAGE_ID, MERGE = 9, 2
SECTION = [2, 3, 3]  # head_dim 16


@pytest.fixture(scope="module")
def hf_model() -> Any:
    from transformers import Qwen2VLConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    text = dict(vocab_size=32, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    text["num_key_value_heads"] = 2
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": SECTION, "rope_theta": 10000.0}
    vision = dict(depth=1, embed_dim=16, hidden_size=64, num_heads=2, patch_size=4, spatial_merge_size=MERGE)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_ID)
    return Qwen2VLModel(config).eval()


def prompt(layout: list[Any]) -> tuple[list[int], list[ImageInput]]:
    """`layout`: ints (that many text tokens) and (h, w) patch grids (an image's span)."""
    ids: list[int] = []
    images = []
    for part in layout:
        if isinstance(part, int):
            ids += [3] * part
        else:
            h, w = part
            length = h * w // MERGE**2
            images.append(ImageInput(np.zeros(1, np.float32), len(ids), length, 100, None, (1, h, w), MERGE))
            ids += [IMAGE_ID] * length
    return ids, images


def hf_rope_index(model: Any, ids: list[int], images: list[ImageInput]) -> tuple[np.ndarray, int]:
    input_ids = torch.tensor([ids])
    grid = torch.tensor([img.grid_thw for img in images]) if images else None
    types = (input_ids == IMAGE_ID).int()
    positions, deltas = model.get_rope_index(input_ids, types, image_grid_thw=grid)
    return positions[:, 0].numpy(), int(deltas[0, 0])


LAYOUTS = {
    "one": [3, (4, 6), 5],
    "two-unequal": [2, (8, 4), 1, (2, 10), 4],
    "image-first": [(6, 6), 3],
    "image-last": [4, (4, 8)],
    "three": [1, (4, 4), 2, (2, 6), 1, (6, 2), 2],
}


@pytest.mark.parametrize("layout", list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_rows_and_delta_equal_hf_rope_index(hf_model: Any, layout: list[Any]) -> None:
    ids, images = prompt(layout)
    wanted, delta = hf_rope_index(hf_model, ids, images)
    np.testing.assert_array_equal(mrope_rows(images, 0, len(ids)), wanted)
    assert rope_delta(images) == delta


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunks_give_the_same_rows_and_generated_tokens_continue_at_delta(chunk: int) -> None:
    ids, images = prompt(LAYOUTS["two-unequal"])
    end = len(ids) + 5  # five generated tokens after the prompt
    whole = mrope_rows(images, 0, end)
    parts = np.concatenate([mrope_rows(images, s, min(s + chunk, end)) for s in range(0, end, chunk)], axis=1)
    np.testing.assert_array_equal(parts, whole)
    after = np.arange(len(ids), end) + rope_delta(images)
    np.testing.assert_array_equal(whole[:, len(ids) :], np.tile(after, (3, 1)))


def test_batch_rows_mix_text_only_requests() -> None:
    ids, images = prompt(LAYOUTS["one"])
    rows, deltas = batch_mrope([(None, 2, 6), (images, 1, len(ids)), ([], 0, 3)])
    np.testing.assert_array_equal(rows[:, :4], np.tile(np.arange(2, 6), (3, 1)))
    np.testing.assert_array_equal(rows[:, 4 : 4 + len(ids) - 1], mrope_rows(images, 1, len(ids)))
    np.testing.assert_array_equal(rows[:, -3:], np.tile(np.arange(3), (3, 1)))
    assert deltas == [0, rope_delta(images), 0]
    assert batch_mrope([(None, 0, 4), ([], 0, 2)]) is None


def hf_rotate(config: Any, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple:
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding, apply_rotary_pos_emb

    cos, sin = Qwen2VLRotaryEmbedding(config)(q, positions[:, None, :])  # [1, T, D]
    q2, k2 = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    return q2[0].transpose(0, 1), k2[0].transpose(0, 1)


def test_rotary_equals_hf_and_one_row_is_plain_rope(hf_model: Any) -> None:
    config = hf_model.config.text_config
    rope = dict(config.rope_parameters)
    ours = MRotaryEmbedding(16, 64, rope, SECTION)
    ours.init_cache(torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(11, 4, 16, generator=gen), torch.randn(11, 2, 16, generator=gen)
    positions = torch.randint(0, 64, (3, 11), generator=gen)
    got, wanted = ours(positions, q.clone(), k.clone()), hf_rotate(config, positions, q, k)
    for a, b in zip(got, wanted):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    plain = RotaryEmbedding(16, 64, {"rope_theta": 10000.0})
    plain.init_cache(torch.device("cpu"))
    same = positions[0]
    for a, b in zip(ours(same, q.clone(), k.clone()), plain(same, q.clone(), k.clone())):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(ours(same.expand(3, -1), q.clone(), k.clone()), ours(same, q.clone(), k.clone())):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_triton_backend_never_fuses_mrope() -> None:
    """The Triton backend fuses `RotaryEmbedding` (exact type) only; M-RoPE is another class, so
    it takes the reference `rotate_and_store`, which calls the module itself."""
    assert not issubclass(MRotaryEmbedding, RotaryEmbedding)
    with pytest.raises(ValueError, match="mrope_section"):
        MRotaryEmbedding(16, 64, {}, [2, 3, 4])
