"""The batched Qwen2-VL / Qwen2.5-VL vision towers (`radixlm.models.qwen2_vl_vision`): the
merged rows equal transformers' own tower (float32, CPU) for several images of different sizes
in one call, and the index helpers equal transformers' per-image loops."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from radixlm.models.qwen2_vl_vision import (
    QwenVisionEncoder,
    make_plan,
    patch_positions,
    segment_groups,
    varlen_attention,
    window_order,
)

PATCH, MERGE, TEMPORAL = 4, 2, 2
TOLERANCE = 1e-5  # float32 rounding only (outputs are O(1))
# patch grids: merged sizes that do and do not divide into 2x2 windows, a repeated size, two frames
GRIDS = [(1, 8, 10), (1, 12, 4), (1, 8, 10), (2, 6, 6), (1, 10, 14), (1, 2, 2)]


def tower(v25: bool) -> Any:
    """A tiny random tower as the golden tests build it (weights N(0, 0.2) outside norms)."""
    if v25:
        from transformers import Qwen2_5_VLVisionConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        config = Qwen2_5_VLVisionConfig(
            depth=3, hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16, fullatt_block_indexes=[1]
        )
        cls = Qwen2_5_VisionTransformerPretrainedModel
    else:
        from transformers import Qwen2VLVisionConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

        config = Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2)
        cls = Qwen2VisionTransformerPretrainedModel
    for key, value in dict(num_heads=4, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=2).items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = cls._from_config(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0, 0.2)
    return model


def pixels_for(grids: list[tuple[int, int, int]]) -> torch.Tensor:
    count = sum(t * h * w for t, h, w in grids)
    return torch.randn(count, 3 * TEMPORAL * PATCH * PATCH, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("v25", [False, True], ids=["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("grids", [GRIDS, GRIDS[:1], [GRIDS[1], GRIDS[1]]], ids=["mixed", "one", "same_size"])
def test_tower_equals_transformers(v25: bool, grids: list[tuple[int, int, int]]) -> None:
    model = tower(v25)
    pixels = pixels_for(grids)
    with torch.no_grad():
        ref = model(pixels, grid_thw=torch.tensor(grids)).pooler_output
    ours = QwenVisionEncoder(model)(pixels, grids)
    assert ours.shape == ref.shape == (sum(t * h * w for t, h, w in grids) // MERGE**2, 64)
    assert ref.abs().max() > 0.5  # a non-trivial output, so the comparison can fail
    assert torch.allclose(ours, ref, atol=TOLERANCE, rtol=0)


def test_one_image_alone_equals_its_rows_in_a_batch() -> None:
    """Attention never crosses images: an image's rows do not depend on its batch mates."""
    model = tower(True)
    encoder = QwenVisionEncoder(model)
    pixels = pixels_for(GRIDS)
    together = encoder(pixels, GRIDS)
    first = GRIDS[0][1] * GRIDS[0][2]
    alone = encoder(pixels[:first], GRIDS[:1])
    assert torch.allclose(together[: first // MERGE**2], alone, atol=TOLERANCE, rtol=0)


def test_patch_positions_equal_transformers() -> None:
    from transformers.vision_utils import get_vision_position_ids

    for grid in GRIDS:
        ref = get_vision_position_ids(torch.tensor([grid]), MERGE).numpy()
        assert np.array_equal(patch_positions(grid, MERGE), ref)


def test_window_order_equals_transformers() -> None:
    from transformers.vision_utils import get_vision_window_index

    for grid in GRIDS:
        ref_index, ref_cu = get_vision_window_index(torch.tensor([grid]), MERGE, 16, PATCH)
        index, counts = window_order(grid, MERGE, 16 // MERGE // PATCH)
        assert np.array_equal(index, ref_index.numpy())
        assert np.array_equal(np.cumsum([0] + counts) * MERGE**2, ref_cu.numpy())


def test_plan_orders_are_inverse_permutations() -> None:
    plan = make_plan(GRIDS, MERGE, 2, torch.device("cpu"))
    merged = plan.order.view(-1, MERGE**2)[:, 0] // MERGE**2
    assert torch.equal(merged[plan.unorder], torch.arange(len(merged)))
    assert sum(g.rows.numel() for g in plan.windows) == plan.order.numel()  # windows of several lengths


def test_varlen_attention_equals_per_segment_attention() -> None:
    lengths = [3, 5, 3, 1, 5, 5]
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(sum(lengths), 2, 8, generator=gen) for _ in range(3))
    out = varlen_attention(q, k, v, segment_groups(lengths, torch.device("cpu")), 8**-0.5)
    start = 0
    for length in lengths:
        seg = slice(start, start + length)
        each = torch.nn.functional.scaled_dot_product_attention(*(x[seg].transpose(0, 1) for x in (q, k, v)))
        assert torch.allclose(out[seg], each.transpose(0, 1), atol=1e-6, rtol=0)
        start += length
    assert segment_groups([4, 4, 4], torch.device("cpu"))[0].rows is None  # uniform: a view, no gather


def check_fused(grids: list[tuple[int, int, int]], tolerance: float) -> None:
    """The fused norm / rotary path (`fused=True`) equals transformers' tower (run on the CPU
    through Triton's interpreter by the test below, compiled on a GPU)."""
    model = tower(True).to("cuda" if torch.cuda.is_available() else "cpu")
    pixels = pixels_for(grids).to(model.patch_embed.proj.weight.device)
    with torch.no_grad():
        ref = model(pixels, grid_thw=torch.tensor(grids)).pooler_output
    ours = QwenVisionEncoder(model, fused=True)(pixels, grids)
    assert ref.abs().max() > 0.5
    assert torch.allclose(ours, ref, atol=tolerance, rtol=0), (ours - ref).abs().max()


def test_fused_tower_equals_transformers() -> None:
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        check_fused(GRIDS, 1e-4)  # TF32-free float32 on the GPU: rounding only
        return
    from helpers.interpreted import UNIT, run_interpreted

    run_interpreted("test_qwen_vision", f"t.check_fused({GRIDS!r}, {TOLERANCE})", paths=[UNIT])


def test_fused_path_needs_rms_norm_blocks() -> None:
    assert not QwenVisionEncoder(tower(False)).fusable
    with pytest.raises(ValueError, match="RMSNorm"):
        QwenVisionEncoder(tower(False), fused=True)
