"""Qwen2-VL / Qwen2.5-VL vision towers run with batched variable-length attention.

The weights and layers (patch embedding, norms, qkv / proj linears, MLPs, patch merger) are
transformers' modules as built by `Qwen2VisionTransformerPretrainedModel` /
`Qwen2_5_VisionTransformerPretrainedModel`; only the computation around them is ours:

- attention never crosses a segment (an image frame, or a Qwen2.5-VL window); the segments of
  one call are grouped by length and each group is one `scaled_dot_product_attention` call
  over a [segments, heads, length, head_dim] batch (no padding, so exact up to rounding),
  instead of one call per segment;
- the per-image index work (rotary (h, w) positions, the window order) is numpy on the host
  from the grids the front already knows, once per distinct grid of a call, and goes to the
  device through pinned memory, so building a call's plan never waits for the device;
- the patch embedding (a Conv3d whose kernel equals its stride) is one matmul;
- on CUDA, a tower with RMSNorm blocks (Qwen2.5-VL) runs each norm with the residual add
  before it as one Triton kernel and rotates q and k in place in one kernel
  (`radixlm.kernels.fused`), instead of a dozen float32 elementwise passes per layer.

Invariant: `QwenVisionEncoder(visual)(pixels, grids)` equals `visual(pixels, grid_thw)`'s
merged output (`pooler_output`) up to float rounding, rows in the same (image, merged patch)
order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radixlm.forward.device_copy import pinned_to_device
from radixlm.layers.basic import use_fused_kernels

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class SegmentGroup:
    """Segments of one length: `rows` [count * length] are their token rows in the packed
    sequence, segment after segment; None when the group is the whole sequence in order."""

    length: int
    rows: Optional[torch.Tensor]


def segment_groups(lengths: Sequence[int], device: torch.device) -> list[SegmentGroup]:
    """Group consecutive segments of a packed sequence (`lengths` in order, all > 0) by length."""
    if len(set(lengths)) == 1:
        return [SegmentGroup(lengths[0], None)]
    starts = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
    by_length: dict[int, list[int]] = {}
    for start, length in zip(starts.tolist(), lengths):
        by_length.setdefault(length, []).append(start)
    groups = []
    for length, firsts in by_length.items():
        rows = (np.asarray(firsts, dtype=np.int64)[:, None] + np.arange(length, dtype=np.int64)).reshape(-1)
        groups.append(SegmentGroup(length, _to_device(rows, device)))
    return groups


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: Sequence[SegmentGroup], scale: float
) -> torch.Tensor:
    """Bidirectional attention of [T, heads, head_dim] q/k/v within each segment of `groups`
    (which together cover all T rows once); [T, heads, head_dim] out."""
    total, heads, dim = q.shape

    def attend(qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, length: int) -> torch.Tensor:
        shape = (-1, length, heads, dim)
        qs, ks, vs = (x.reshape(shape).transpose(1, 2) for x in (qs, ks, vs))
        out = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        return out.transpose(1, 2).reshape(-1, heads, dim)

    if len(groups) == 1 and groups[0].rows is None:
        return attend(q, k, v, groups[0].length)
    out = q.new_empty(total, heads, dim)
    for group in groups:
        rows = group.rows
        out.index_copy_(0, rows, attend(q[rows], k[rows], v[rows], group.length))
    return out


def patch_positions(grid: Grid, merge: int) -> np.ndarray:
    """[t*h*w, 2] int64 (row, column) of each patch of a (t, h, w) patch grid, in the tower's
    order: merge x merge blocks row-major, the patches of a block row-major, frame after frame."""
    t, h, w = grid
    rows, cols = np.indices((h, w), dtype=np.int64)
    blocks = (h // merge, merge, w // merge, merge)
    rows = rows.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(np.stack([rows, cols], axis=1), (t, 1))


def window_order(grid: Grid, merge: int, window: int) -> tuple[np.ndarray, list[int]]:
    """Qwen2.5-VL windows of one (t, h, w) patch grid: the merged-patch indices (0-based, in
    the tower's merged order) window after window (each window row-major, windows row-major,
    frame after frame; `window` merged patches per side, edge windows smaller), and each
    window's merged-patch count."""
    t, h, w = grid
    gh, gw = h // merge, w // merge
    nh, nw = -(-gh // window), -(-gw // window)
    index = np.full((t, nh * window, nw * window), -1, dtype=np.int64)
    index[:, :gh, :gw] = np.arange(t * gh * gw, dtype=np.int64).reshape(t, gh, gw)
    tiles = index.reshape(t, nh, window, nw, window).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, -1)
    valid = tiles >= 0
    return tiles[valid], valid.sum(axis=1).tolist()


@dataclass(frozen=True)
class VisionPlan:
    """Everything a tower call needs besides the pixels, on the device. `order`: the patch
    row each position of the tower's sequence takes (None: patch order); `full` / `windows`:
    the segments of full-attention / window-attention layers (in sequence order); `unorder`:
    the merged-row permutation back to image order (None when `order` is None)."""

    positions: torch.Tensor  # [patches, 2] int64 (row, column), in sequence order
    full: list[SegmentGroup]
    windows: Optional[list[SegmentGroup]]
    order: Optional[torch.Tensor]
    unorder: Optional[torch.Tensor]


def make_plan(grids: Sequence[Grid], merge: int, window: Optional[int], device: torch.device) -> VisionPlan:
    """The plan of a call over images with patch grids `grids`; `window` (Qwen2.5-VL): merged
    patches per window side, None for a tower with full attention only (Qwen2-VL). Each
    distinct grid is laid out once; its tables go to the device in one pinned copy."""
    frames = [h * w for t, h, w in grids for _ in range(t)]
    if window is None:
        positions = np.concatenate([patch_positions(g, merge) for g in grids])
        return VisionPlan(_to_device(positions, device), segment_groups(frames, device), None, None, None)
    layouts = {grid: _window_layout(grid, merge, window) for grid in set(grids)}
    positions, orders, unorders, window_lengths = [], [], [], []
    patch_base = 0
    for grid in grids:
        pos, order, unorder, lengths = layouts[grid]
        positions.append(pos)
        orders.append(order + patch_base)
        unorders.append(unorder + patch_base // (merge * merge))
        window_lengths += lengths
        patch_base += len(order)
    tables = [np.concatenate(positions).reshape(-1), np.concatenate(orders), np.concatenate(unorders)]
    flat = _to_device(np.concatenate(tables), device)
    pos, order, unorder = torch.split(flat, [len(t) for t in tables])
    return VisionPlan(
        pos.view(-1, 2),
        segment_groups(frames, device),  # windows never cross a frame, so frames stay contiguous
        segment_groups(window_lengths, device),
        order,
        unorder,
    )


def _window_layout(grid: Grid, merge: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """One image's window layout: its patches' (row, column) in sequence order [patches, 2], the
    patch each sequence position takes, the merged-row permutation back to image order, and
    the window lengths in patches (all indices local to the image)."""
    unit = merge * merge
    merged, counts = window_order(grid, merge, window)
    order = (merged[:, None] * unit + np.arange(unit, dtype=np.int64)).reshape(-1)
    unorder = np.empty_like(merged)
    unorder[merged] = np.arange(len(merged), dtype=np.int64)
    return patch_positions(grid, merge)[order], order, unorder, [c * unit for c in counts]


def _to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """An int64 array on `device` through pinned memory (the host never waits for the device)."""
    return pinned_to_device(torch.from_numpy(np.ascontiguousarray(values)), device)


def rotary_angles(inv_freq: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[patches, head_dim // 2] float32 angles of the towers' 2-D rotary: the row angles then the
    column angles (`inv_freq`: head_dim // 4 frequencies); each rotates a (d, d + head_dim / 2) pair."""
    angles = positions[..., None].float() * inv_freq.float()  # [N, 2, head_dim // 4]
    return torch.cat([angles[:, 0], angles[:, 1]], dim=-1)


def rotary_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[patches, head_dim] float32 cos and sin of `rotary_angles`, the pair repeated."""
    half = rotary_angles(inv_freq, positions)
    both = torch.cat([half, half], dim=-1)
    return both.cos(), both.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary of [T, heads, head_dim] `x`, computed in float32, returned in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    turned = torch.cat([-x2, x1], dim=-1)
    return (xf * cos[:, None] + turned * sin[:, None]).to(x.dtype)


class QwenVisionEncoder:
    """Runs a transformers Qwen2-VL or Qwen2.5-VL vision tower (`visual`, whose parameters stay
    where the model loader puts them) with `varlen_attention`. Holds no state besides `visual`.
    `fused`: the Triton norm / rotary kernels (RMSNorm towers only); None: on CUDA when Triton
    is importable, else the transformers modules' own ops."""

    def __init__(self, visual: nn.Module, fused: Optional[bool] = None) -> None:
        config = visual.config
        self.visual = visual
        self.fusable = all(_is_rms_norm(b.norm1) and _is_rms_norm(b.norm2) for b in visual.blocks)
        if fused and not self.fusable:
            raise ValueError("the fused vision path needs RMSNorm blocks (Qwen2.5-VL)")
        self.fused = fused
        self.merge = int(config.spatial_merge_size)
        fullatt = getattr(config, "fullatt_block_indexes", None)
        self.window: Optional[int] = None
        self.full_layers = frozenset(range(len(visual.blocks)))
        if fullatt is not None:  # Qwen2.5-VL: window attention except in these layers
            self.window = int(config.window_size) // self.merge // int(config.patch_size)
            self.full_layers = frozenset(int(i) for i in fullatt)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, grids: Sequence[Grid]) -> torch.Tensor:
        """[sum t*h*w / merge², out_hidden] merged rows of images with patch grids `grids`
        (`pixels`: their [sum t*h*w, C*T*P*P] patches, image after image)."""
        visual = self.visual
        weight = visual.patch_embed.proj.weight
        plan = make_plan(grids, self.merge, self.window, weight.device)
        x = F.linear(pixels.to(weight.dtype), weight.reshape(weight.shape[0], -1))
        if plan.order is not None:
            x = x[plan.order]
        fused = self.fused if self.fused is not None else self.fusable and use_fused_kernels(x.device)
        x = self._blocks_fused(x, plan) if fused else self._blocks(x, plan)
        merged = visual.merger(x)
        return merged if plan.unorder is None else merged[plan.unorder]

    def _groups(self, layer: int, plan: VisionPlan) -> list[SegmentGroup]:
        return plan.full if layer in self.full_layers else plan.windows

    def _blocks(self, x: torch.Tensor, plan: VisionPlan) -> torch.Tensor:
        """The blocks with transformers' own norms and float32 rotary."""
        cos, sin = rotary_cos_sin(self.visual.rotary_pos_emb.inv_freq, plan.positions)
        for i, block in enumerate(self.visual.blocks):
            x = x + self._attention(block.attn, block.norm1(x), cos, sin, self._groups(i, plan))
            x = x + block.mlp(block.norm2(x))
        return x

    def _blocks_fused(self, x: torch.Tensor, plan: VisionPlan) -> torch.Tensor:
        """`_blocks` with each residual add and the RMSNorm after it in one kernel, and q and k
        rotated in place in one kernel (both in float32, stored in x's dtype, as transformers')."""
        from radixlm.kernels.fused import rmsnorm, rotary_inplace

        blocks = self.visual.blocks
        angles = rotary_angles(self.visual.rotary_pos_emb.inv_freq, plan.positions)
        cos, sin = angles.cos(), angles.sin()
        rows = torch.arange(x.shape[0], device=x.device)  # the kernel reads cos / sin row `rows[t]`
        h, _ = rmsnorm(x, blocks[0].norm1.weight, blocks[0].norm1.variance_epsilon)
        for i, block in enumerate(blocks):
            attn = block.attn
            total = h.shape[0]
            q, k, v = attn.qkv(h).reshape(total, 3, attn.num_heads, -1).unbind(1)
            rotary_inplace(rows, q, k, cos, sin)
            out = attn.proj(varlen_attention(q, k, v, self._groups(i, plan), attn.scaling).reshape(total, -1))
            h, x = rmsnorm(out, block.norm2.weight, block.norm2.variance_epsilon, x)  # x + out, normed
            out = block.mlp(h)
            if i + 1 == len(blocks):
                return x + out
            following = blocks[i + 1].norm1
            h, x = rmsnorm(out, following.weight, following.variance_epsilon, x)
        return x

    @staticmethod
    def _attention(
        attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, groups: Sequence[SegmentGroup]
    ) -> torch.Tensor:
        """One block's attention (its qkv / proj linears) over `x` [T, dim]."""
        total = x.shape[0]
        q, k, v = attn.qkv(x).reshape(total, 3, attn.num_heads, -1).unbind(1)
        out = varlen_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, groups, attn.scaling)
        return attn.proj(out.reshape(total, -1))


def _is_rms_norm(norm: nn.Module) -> bool:
    """transformers' RMSNorm (weight and `variance_epsilon`, no bias), as the fused kernel computes it."""
    return type(norm).__name__.endswith("RMSNorm") and hasattr(norm, "variance_epsilon")
