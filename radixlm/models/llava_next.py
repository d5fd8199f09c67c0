"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): LLaVA-1.5's tower, projector and language
model with any-resolution images. Each image arrives as [tiles, 3, S, S] (the base tile first,
then the grid row by row); its embedding rows are the base tile's patches, then the grid's
features cropped to the image's aspect ratio with `image_newline` closing every row
(`radixlm.multimodal.anyres` counts the same rows on the front)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from radixlm.attention.base import AttentionBackend
from radixlm.distributed.group import TPGroup
from radixlm.models.llava import LlavaForConditionalGeneration
from radixlm.multimodal.anyres import cropped_shape, grid_shape
from radixlm.multimodal.inputs import ImageInput


class LlavaNextForConditionalGeneration(LlavaForConditionalGeneration):
    def __init__(self, config: Any, backend: AttentionBackend, tp: Optional[TPGroup] = None) -> None:
        super().__init__(config, backend, tp)
        self.image_newline = nn.Parameter(torch.empty(config.text_config.hidden_size))

    def image_features(self, images: list[ImageInput]) -> list[torch.Tensor]:
        param = self.multi_modal_projector.linear_1.weight
        out = []
        for image in images:  # tile counts differ between images
            tiles = torch.from_numpy(image.pixel_values).to(param.device, param.dtype)
            out.append(self._pack(self.encode(tiles), image.image_size))
        return out

    def _pack(self, features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """[tiles, side*side, H] → the image's embedding rows (see the module doc)."""
        tile = self.config.vision_config.image_size
        side = tile // self.config.vision_config.patch_size
        grid_rows, grid_cols = grid_shape(image_size, self.config.image_grid_pinpoints, tile)
        if features.shape[0] != 1 + grid_rows * grid_cols:
            wanted = f"1 + {grid_rows}x{grid_cols}"
            raise ValueError(f"image of size {image_size} has {features.shape[0]} tiles, expected {wanted}")
        hidden = features.shape[-1]
        grid = features[1:].view(grid_rows, grid_cols, side, side, hidden)
        grid = grid.permute(0, 2, 1, 3, 4).reshape(grid_rows * side, grid_cols * side, hidden)
        r0, rows, c0, cols = cropped_shape(image_size, grid_rows * side, grid_cols * side)
        grid = grid[r0 : r0 + rows, c0 : c0 + cols]
        newline = self.image_newline.to(grid.dtype).expand(rows, 1, hidden)
        return torch.cat([features[0], torch.cat([grid, newline], dim=1).reshape(-1, hidden)])
