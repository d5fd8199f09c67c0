"""A lossless 4x smaller form of processed Qwen2-VL pixels for the trip front → scheduler →
GPU: an image processor that rescales and normalizes 8-bit pixels gives each channel at most
256 distinct float32 values, so the [patches, C*T*P*P] array is uint8 codes plus a
[C, 256] float32 table. Encoding is checked bitwise; an array that is not exactly
representable (another processor, resampling after normalization) keeps its float32 form."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from radixlm.forward.device_copy import pinned_to_device

LEVELS = 256
SAMPLE_STRIDE = 16  # rows of an image that seed `encode`'s candidate table
Affine = tuple[np.ndarray, np.ndarray, float]  # (mean, std, rescale factor) per channel


def channel_affine(processor: Any) -> Optional[Affine]:
    """(mean, std, rescale factor) of an HF image processor that rescales and normalizes,
    else None (then nothing is encoded)."""
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    scale = getattr(processor, "rescale_factor", None)
    if mean is None or std is None or not scale or not getattr(processor, "do_normalize", True):
        return None
    return np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64), float(scale)


def encode(values: np.ndarray, affine: Affine) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(codes uint8 [rows, cols], table float32 [channels, 256]) with
    `decode_numpy(codes, table) == values` bitwise (column j is channel j // (cols / channels));
    None when `values` [rows, cols] float32 is not exactly representable so."""
    mean, std, scale = affine
    channels = len(mean)
    rows, cols = values.shape
    if values.dtype != np.float32 or cols % channels:
        return None
    by_channel = values.reshape(rows, channels, cols // channels)
    levels = by_channel * (std / scale).astype(np.float32)[:, None]
    levels += (mean / scale).astype(np.float32)[:, None]
    codes = np.rint(levels, out=levels).astype(np.uint8)  # a wrong code is caught by the check below
    index = _table_index(codes, channels)
    flat = by_channel.reshape(-1)
    for table in (_sampled_table(affine, codes, by_channel), None):
        if table is None:  # every value written (a code seen with two values keeps one: the check fails)
            table = np.zeros(channels * LEVELS, dtype=np.float32)
            table[index] = flat
        if np.array_equal(table.take(index), flat):
            return codes.reshape(rows, cols), table.reshape(channels, LEVELS)
    return None


def _sampled_table(affine: Affine, codes: np.ndarray, by_channel: np.ndarray) -> np.ndarray:
    """A cheap candidate table (flat [channels * 256]): the values of every `SAMPLE_STRIDE`-th
    row, over transformers' rescale-then-normalize arithmetic for the levels those rows lack.
    `encode` checks it against every value (and builds the table from all of them if it fails)."""
    mean, std, scale = affine
    ramp = (np.arange(LEVELS, dtype=np.float64) * scale).astype(np.float32)
    table = (ramp[None, :] - mean.astype(np.float32)[:, None]) / std.astype(np.float32)[:, None]
    table = table.astype(np.float32).reshape(-1)
    sample = slice(None, None, SAMPLE_STRIDE)
    table[_table_index(codes[sample], len(mean))] = by_channel[sample].reshape(-1)
    return table


def _table_index(codes: np.ndarray, channels: int) -> np.ndarray:
    """Flat [channels * 256] table positions of [rows, channels, per_channel] uint8 codes."""
    index = codes.astype(np.int16)
    index += (np.arange(channels, dtype=np.int16) * LEVELS)[:, None]
    return index.reshape(-1)


def decode_numpy(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The float32 [rows, cols] array `encode` was given."""
    rows, cols = codes.shape
    channels = table.shape[0]
    index = _table_index(codes.reshape(rows, channels, cols // channels), channels)
    return table.reshape(-1).take(index).reshape(rows, cols)


def decode_torch(codes: np.ndarray, table: np.ndarray, device: torch.device) -> torch.Tensor:
    """`decode_numpy` on `device`: only the codes and the table are copied there."""
    return decode_torch_batch([codes], [table], device)


def decode_torch_batch(codes: Sequence[np.ndarray], tables: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """The rows of several coded arrays (`codes[i]` [rows_i, cols] with its table `tables[i]`,
    all with the same cols and channels), concatenated: `decode_numpy` of each, in order, on
    `device`. One copy each of all codes, all tables and a per-row table offset, through
    pinned memory (a CUDA host never waits for the device)."""
    cols, channels = codes[0].shape[1], tables[0].shape[0]
    counts = [c.shape[0] for c in codes]
    bases = np.repeat(np.arange(len(codes), dtype=np.int64) * (channels * LEVELS), counts)
    staged = torch.empty((sum(counts), cols), dtype=torch.uint8, pin_memory=device.type == "cuda")
    np.concatenate(codes, out=staged.numpy())  # straight into pinned memory: one pass over the codes
    index = staged.to(device, non_blocking=True)
    table = pinned_to_device(torch.from_numpy(np.stack(tables)), device).view(-1)
    base = pinned_to_device(torch.from_numpy(bases), device).view(-1, 1, 1)
    index = index.view(-1, channels, cols // channels).long()
    index += base + (torch.arange(channels, device=device) * LEVELS).view(1, channels, 1)
    return table[index].view(sum(counts), cols)
