"""The defect type from what is inside the drawn mask (docs/words.md).

The answer's words read where the mask is, not what is inside it: a region descriptor on the
vision tower's frozen levels (the mean feature inside the mask, and inside minus outside: a
linear probe's input, after the region features of Anomaly-OV and IAD-Unify) goes to a linear
classifier over the training classes' defect types, fitted after training
(``training.type_head``). Where its probability is below ``min_probability`` it abstains: the
answer then says "an anomaly" rather than a wrong name. A region drawn against references is
named at a lower probability unless it is far from every trained type (:class:`NoveltyGate`).
Stored with the model as JSON (some 16,000 numbers), like the decision thresholds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vmad_pipeline.models.references import level_features


@dataclass(frozen=True)
class NoveltyGate:
    """How far a region is from every defect type the head was fitted on: the mean over the
    descriptor's dimensions of the squared, standardised distance to the nearest type's mean,
    each dimension scaled by its within-type variance (a diagonal Mahalanobis distance). A
    classifier's probability says which trained type a region is most like, not whether it is
    like any: a type no training class has can still take a high probability. Over the training
    classes held out in turn (true masks), the gate let the head name 48% of the held-out
    defects at precision 0.935 where probability alone named 43%, with 80% of held-out types
    left unnamed in both. Only where the region was drawn against references: zero-shot, a
    new object's drawn mask covers its normal structure, and the gate's names were wrong more
    often than right (docs/words.md, "The novelty gate")."""

    centre: list[float]  # D: the training descriptors' mean
    scale: list[float]  # D: their standard deviation
    means: list[list[float]]  # T x D: each type's mean, standardised
    spread: list[float]  # D: the within-type variance of the standardised descriptors
    max_novelty: float  # past it, no type is named
    min_probability: float  # the probability chosen with it (below: no type named)

    def novelty(self, descriptors: np.ndarray) -> np.ndarray:
        """N x D -> N: each descriptor's distance to the nearest type (see the class)."""
        z = (np.asarray(descriptors, np.float64) - np.asarray(self.centre)) / np.asarray(self.scale)
        d = (z[:, None, :] - np.asarray(self.means)[None]) ** 2 / np.asarray(self.spread)
        return d.mean(-1).min(1)


@dataclass(frozen=True)
class TypeHead:
    types: list[str]  # the classes, in the order of coef's rows
    coef: list[list[float]]  # T x D
    intercept: list[float]  # T
    min_probability: float  # below it, no type is named
    levels: list[int]  # the tower's native levels read
    grid: int  # the descriptor's grid (each level resized to it)
    input_size: int | None  # the images are resized to this before the tower (None: as given)
    crop: float = 0.0  # > 0: cut around the mask first (crop_regions), this times its box
    meta: dict[str, Any] = field(default_factory=dict)  # how it was fitted, its measured figures
    gate: NoveltyGate | None = None  # None: the probability alone decides (heads before it)

    @classmethod
    def from_json(cls, data: dict | None) -> TypeHead | None:
        if not data:
            return None
        gate = data.get("gate")
        return cls(**{**data, "gate": NoveltyGate(**gate) if gate else None})

    def to_json(self) -> dict:
        return asdict(self)

    @torch.no_grad()
    def descriptors(self, vision, images: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
        """N x 2C: of each image (N x 3 x S x S, as the tower reads it), the mean of its level
        features inside ``masks`` (N x H x W in [0, 1], any size) and that minus the mean
        outside. An empty mask reads as the whole image."""
        return region_descriptors(
            vision, images, masks, self.levels, self.grid, self.input_size, self.crop
        )

    def classify(
        self, descriptors: np.ndarray, *, abstain: bool = True, gated=None
    ) -> tuple[list[str | None], np.ndarray]:
        """Each descriptor's type and its probability. A type is named at ``min_probability``;
        where ``gated`` (one bool a descriptor: its region drawn against references) and the
        head has a gate, at the gate's pair instead (``NoveltyGate.min_probability`` and
        ``max_novelty``); not ``abstain``: always."""
        logits = descriptors @ np.asarray(self.coef, np.float64).T + np.asarray(self.intercept)
        p = torch.softmax(torch.as_tensor(logits), -1).numpy()
        best = p.argmax(1)
        prob = p[np.arange(len(p)), best]
        sure = prob >= self.min_probability
        if self.gate is not None and gated is not None and np.any(gated):
            rows = np.asarray(gated, bool)
            near = self.gate.novelty(descriptors[rows]) <= self.gate.max_novelty
            sure[rows] = (prob[rows] >= self.gate.min_probability) & near
        if not abstain:
            sure[:] = True
        named = [self.types[b] if ok else None for b, ok in zip(best, sure, strict=True)]
        return named, prob


@torch.no_grad()
def region_descriptors(
    vision,
    images: torch.Tensor,
    masks: torch.Tensor | np.ndarray,
    levels: list[int],
    grid: int,
    input_size: int | None,
    crop: float = 0.0,
) -> np.ndarray:
    """:meth:`TypeHead.descriptors`, for fitting before a head exists. ``crop`` > 0: each image
    is first cut to a square around its mask (:func:`crop_regions`), so the tower sees the
    defect larger at the cost of one pass at its own size."""
    x = images.float()
    m = torch.as_tensor(np.asarray(masks, np.float32)).to(x.device)[:, None]
    if m.shape[-2:] != x.shape[-2:]:
        m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)
    empty = m.flatten(1).amax(1) <= 0
    m[empty] = 1.0  # an empty mask reads as the whole image
    size = input_size or x.shape[-1]
    if crop > 0:
        x, m = crop_regions(x, m, crop, size)
    elif size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    maps = vision.native_levels(x)
    bad = [level for level in levels if not -len(maps) <= level < len(maps)]
    if bad:
        raise ValueError(f"type head levels {bad}: this vision tower has {len(maps)} levels")
    feats = level_features(maps, tuple(levels), grid).float()
    m = F.adaptive_avg_pool2d(m.to(feats.device), grid)
    inside = (feats * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1e-6)
    outside = (feats * (1 - m)).sum((2, 3)) / (1 - m).sum((2, 3)).clamp_min(1e-6)
    return torch.cat([inside, inside - outside], 1).cpu().double().numpy()


def crop_regions(
    images: torch.Tensor, masks: torch.Tensor, scale: float, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image (N x 3 x S x S) and its mask (N x 1 x S x S) cut to a square around the
    mask's box: ``scale`` times its longer side, at least a quarter of the image, within the
    image; both resized to ``size``. A zoom on the defect with some of its surroundings (its
    inside-minus-outside reads them), at the cost of one pass at the tower's own size: seed 0's
    true masks were named as well as from the whole image at twice the size (67% and 68%), at
    8 against 80 ms an image on 2 cores."""
    side_max = images.shape[-1]
    out_x, out_m = [], []
    for image, mask in zip(images, masks, strict=True):
        ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
        if len(ys) == 0:
            ys, xs = torch.nonzero(mask[0] > 0, as_tuple=True)
        y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
        side = min(side_max, max(side_max / 4, scale * max(y1 - y0, x1 - x0)))
        top = int(round(min(max((y0 + y1 - side) / 2, 0), side_max - side)))
        left = int(round(min(max((x0 + x1 - side) / 2, 0), side_max - side)))
        s = max(1, int(round(side)))
        box = (slice(None), slice(top, top + s), slice(left, left + s))
        out_x.append(
            F.interpolate(image[box][None], size=size, mode="bilinear", align_corners=False)
        )
        out_m.append(
            F.interpolate(mask[box][None], size=size, mode="bilinear", align_corners=False)
        )
    return torch.cat(out_x), torch.cat(out_m)
