"""IAD-Unify's region-grounded token injection (seed ``shared/seeds/002_...``: "a frozen region
expert supplies precise anomaly evidence to a shared VLM backbone via lightweight token
injection"; removing it cost the seed more than 76 points of location accuracy).

The seed names the mechanism only. Ours: a region is the bounding box of a mask (the model's
own, the anomaly expert's map, or the ground truth in training: the caller's choice) thresholded
at ``threshold``; its features are ROI-aligned (torchvision's ``roi_align``) from the vision
features on a ``grid`` x ``grid`` of cells, each cell one token; every token also carries an
encoding of the box and the area (x0, y0, x1, y1, area share, all in [0, 1]). Two small
projections (features -> LLM width, geometry -> LLM width) are all that is trained: the LLM is
unchanged. An empty mask gives the whole image as its box and area 0, so "no region" is a
region too and the tokens' count never changes.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


def mask_boxes(masks: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """B x H x W maps -> (B x 4 boxes (x0, y0, x1, y1) as shares of the width and height, the
    pixels' outer edges; B area shares of the pixels >= ``threshold``). Empty: the whole image,
    area 0."""
    b, h, w = masks.shape
    on = masks >= threshold
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=masks.device).repeat(b, 1)
    for i in range(b):
        ys, xs = torch.nonzero(on[i], as_tuple=True)
        if len(ys):
            boxes[i] = torch.stack(
                [xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]
            ).float()
    return boxes, on.flatten(1).float().mean(1)


class RegionTokens(nn.Module):
    """(vision features B x C x h x w, region masks B x H x W) -> B x grid^2 x llm_width."""

    def __init__(self, feature_width: int, llm_width: int, grid: int = 2, threshold: float = 0.5):
        super().__init__()
        self.grid, self.threshold = grid, threshold
        self.features = nn.Linear(feature_width, llm_width)
        self.geometry = nn.Linear(5, llm_width)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def pooled(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The region's features on its grid: B x grid^2 x C (boxes as shares of the image)."""
        b, _, h, w = features.shape
        scale = torch.tensor([w, h, w, h], dtype=features.dtype, device=features.device)
        rois = torch.cat(
            [
                torch.arange(b, device=features.device)[:, None].to(features.dtype),
                boxes.to(features.dtype) * scale,
            ],
            1,
        )
        # in fp32: torchvision's CPU kernel has no bf16, and the means are more exact there
        cells = roi_align(
            features.float(),
            rois.float(),
            self.grid,
            spatial_scale=1.0,
            sampling_ratio=2,
            aligned=True,
        )
        return cells.flatten(2).transpose(1, 2).to(features.dtype)

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        boxes, area = mask_boxes(masks, self.threshold)
        geometry = torch.cat([boxes, area[:, None]], 1).to(features.dtype)
        return self.features(self.pooled(features, boxes)) + self.geometry(geometry)[:, None]
