"""The defect type from what is inside the drawn mask (docs/words.md).

The answer's words read where the mask is, not what is inside it: a region descriptor on the
vision tower's frozen levels (the mean feature inside the mask, and inside minus outside: a
linear probe's input, after the region features of Anomaly-OV and IAD-Unify) goes to a linear
classifier over the training classes' defect types, fitted after training
(``training.type_head``). Where its probability is below ``min_probability``, it abstains: the
answer then says "an anomaly" rather than a wrong name. Stored with the model as JSON (a few
thousand numbers), like the decision thresholds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vmad_pipeline.models.references import level_features


@dataclass(frozen=True)
class TypeHead:
    types: list[str]  # the classes, in the order of coef's rows
    coef: list[list[float]]  # T x D
    intercept: list[float]  # T
    min_probability: float  # below it, no type is named
    levels: list[int]  # the tower's native levels read
    grid: int  # the descriptor's grid (each level resized to it)
    input_size: int | None  # the images are resized to this before the tower (None: as given)
    meta: dict[str, Any] = field(default_factory=dict)  # how it was fitted, its measured figures

    @classmethod
    def from_json(cls, data: dict | None) -> TypeHead | None:
        return cls(**data) if data else None

    def to_json(self) -> dict:
        return asdict(self)

    @torch.no_grad()
    def descriptors(self, vision, images: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
        """N x 2C: of each image (N x 3 x S x S, as the tower reads it), the mean of its level
        features inside ``masks`` (N x H x W in [0, 1], any size) and that minus the mean
        outside. An empty mask reads as the whole image."""
        return region_descriptors(vision, images, masks, self.levels, self.grid, self.input_size)

    def classify(
        self, descriptors: np.ndarray, *, abstain: bool = True
    ) -> tuple[list[str | None], np.ndarray]:
        """Each descriptor's type (None below ``min_probability``, unless not ``abstain``) and
        its probability."""
        logits = descriptors @ np.asarray(self.coef, np.float64).T + np.asarray(self.intercept)
        p = torch.softmax(torch.as_tensor(logits), -1).numpy()
        best = p.argmax(1)
        prob = p[np.arange(len(p)), best]
        named = [
            self.types[b] if q >= self.min_probability else None
            for b, q in zip(best, prob, strict=True)
        ]
        return named, prob


@torch.no_grad()
def region_descriptors(
    vision,
    images: torch.Tensor,
    masks: torch.Tensor | np.ndarray,
    levels: list[int],
    grid: int,
    input_size: int | None,
) -> np.ndarray:
    """:meth:`TypeHead.descriptors`, for fitting before a head exists."""
    x = images.float()
    if input_size and x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    maps = vision.native_levels(x)
    bad = [level for level in levels if not -len(maps) <= level < len(maps)]
    if bad:
        raise ValueError(f"type head levels {bad}: this vision tower has {len(maps)} levels")
    feats = level_features(maps, tuple(levels), grid).float()
    m = torch.as_tensor(np.asarray(masks, np.float32)).to(feats.device)[:, None]
    m = F.adaptive_avg_pool2d(m, grid)
    empty = m.flatten(1).sum(1) <= 0
    m[empty] = 1.0
    inside = (feats * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1e-6)
    outside = (feats * (1 - m)).sum((2, 3)) / (1 - m).sum((2, 3)).clamp_min(1e-6)
    return torch.cat([inside, inside - outside], 1).cpu().double().numpy()
