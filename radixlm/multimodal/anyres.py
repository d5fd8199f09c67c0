"""LLaVA-NeXT's any-resolution layout: an image becomes a base tile (the whole image at the
tile size) plus a grid of tiles at the best of the configured resolutions; the grid's features
are cropped back to the image's aspect ratio and end every row with a newline embedding. These
functions give the grid and the cropped shape, so the front and the model count alike."""

from __future__ import annotations

from typing import Any


def grid_shape(image_size: tuple[int, int], pinpoints: list, tile: int) -> tuple[int, int]:
    """(rows, cols) of tiles for an image of `image_size` (height, width)."""
    from transformers.image_processing_utils import select_best_resolution

    height, width = select_best_resolution(tuple(image_size), [tuple(p) for p in pinpoints])
    return height // tile, width // tile


def cropped_shape(image_size: tuple[int, int], rows: int, cols: int) -> tuple[int, int, int, int]:
    """(first row, row count, first col, col count) of a rows x cols feature grid that hold the
    image once the letterbox padding of its aspect ratio is cut off (symmetrically)."""
    height, width = image_size
    if width / height > cols / rows:  # wider than the grid: padding above and below
        kept = int(round(height * (cols / width), 7))
        pad = (rows - kept) // 2
        return pad, rows - 2 * pad, 0, cols
    kept = int(round(width * (rows / height), 7))
    pad = (cols - kept) // 2
    return 0, rows, pad, cols - 2 * pad


def anyres_token_count(config: Any, image_size: tuple[int, int]) -> int:
    """Embedding rows of one image: the base tile's patches, then the cropped grid's rows each
    with one newline."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    grid_rows, grid_cols = grid_shape(image_size, config.image_grid_pinpoints, vision.image_size)
    _, rows, _, cols = cropped_shape(image_size, grid_rows * side, grid_cols * side)
    return side * side + rows * (cols + 1)
