"""The image against itself: a comparison that needs no reference (zero-shot).

Most of an inspected part repeats within its own image (a texture everywhere, a rim or a ring all
round, a board's pads and tracks), and so does most of its mirror image; a defect does not. Each
patch of the image is scored by its distance to the nearest patch of the image's own views (itself
and, with ``flips``, its mirror images: ``models.references.FLIPS``), leaving out the patches that
show the patch's own surroundings (within ``radius`` patches of it, in every view). The features
are the vision tower's frozen levels, as the references' comparison reads them. Where the image
has no references, the model's anomaly map is multiplied by ``min(1, distance / scale)``: a place
that the image repeats elsewhere is turned down, one unlike the rest of the image is kept.

Measured in docs/references.md, "The image against itself". Ours; the idea of scoring a patch
against the rest of its own image is that of self-similarity anomaly detection, and MuSc's mutual
scoring (Li et al., ICLR 2024) does it across the images of a batch.
"""

from __future__ import annotations

import numpy as np
import torch

from vmad_pipeline.configs.model import SelfComparisonConfig
from vmad_pipeline.models.references import FLIPS, level_features, side_by_side, smoothed


def _sources(h: int, w: int, n_views: int) -> torch.Tensor:
    """(V h w) x 2: for each patch of the views (view, row, column order), the (row, column) of
    the image's patch it shows (a flipped view shows the mirrored one)."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    out = []
    for dims in FLIPS[:n_views]:
        y = h - 1 - yy if -2 in dims else yy
        x = w - 1 - xx if -1 in dims else xx
        out.append(torch.stack([y.flatten(), x.flatten()], 1))
    return torch.cat(out)


def self_distances(features: torch.Tensor, n_views: int, radius: int) -> torch.Tensor:
    """N x C x h x (V w) (each image's views side by side, view 0 the image itself:
    ``models.references.side_by_side``) -> N x h x w: each patch of the image's distance to the
    nearest patch of its views that shows a place more than ``radius`` patches (Chebyshev) from
    its own."""
    n, c, h, vw = features.shape
    if n_views < 1 or n_views > len(FLIPS) or vw % n_views:
        raise ValueError(f"a map {vw} patches wide is not {n_views} views side by side")
    w = vw // n_views
    sources = _sources(h, w, n_views).to(features.device)
    near = (sources[: h * w, None, :] - sources[None, :, :]).abs().amax(-1) <= radius
    if bool(near.all(1).any()):
        raise ValueError(f"radius {radius} leaves a patch of a {h} x {w} grid nothing to compare")
    out = []
    for image in features:
        rows = image.view(c, h, n_views, w).permute(2, 1, 3, 0).reshape(-1, c).float()
        d = torch.cdist(rows[: h * w], rows)
        out.append(d.masked_fill(near, float("inf")).amin(1).view(h, w))
    return torch.stack(out) if out else features.new_zeros(0, h, w)


def self_maps(
    vision: torch.nn.Module, views: torch.Tensor, cfg: SelfComparisonConfig, size: int
) -> np.ndarray:
    """N images in their views as the vision tower reads them (V N x 3 x S x S in [0, 1], view
    after view: ``models.references.flipped``'s order, V = 4 with ``cfg.flips``, else 1) -> N x
    size x size maps of each patch's distance (:func:`self_distances`) on the tower's native
    levels, upsampled and blurred by half a patch."""
    n_views = len(FLIPS) if cfg.flips else 1
    if len(views) % n_views:
        raise ValueError(f"{len(views)} images are not {n_views} views of the same images")
    # a view at a time: on 2 CPU cores the tower ran 2.5x slower on the 4 views at once
    upto = max(cfg.levels) + 1 if min(cfg.levels) >= 0 else None  # the deeper levels not run
    chunks = [vision.native_levels(v, upto=upto) for v in views.split(len(views) // n_views)]
    levels = [torch.cat(level) for level in zip(*chunks, strict=True)]
    grid = max(1, views.shape[-1] // cfg.stride)
    feats = level_features(levels, cfg.levels, grid, normalise=True).float()
    distances = self_distances(side_by_side(feats, n_views), n_views, cfg.radius).cpu()
    return smoothed(distances, size, 0.5 * size / grid)  # sigma: half a patch at ``size``


def self_factors(distances: np.ndarray, cfg: SelfComparisonConfig) -> np.ndarray:
    """The factors in [0, 1] that the model's maps are multiplied by: :func:`self_maps`'s
    ``distances`` over ``cfg.scale``, at most 1."""
    return np.clip(distances / cfg.scale, 0.0, 1.0)


def score_factors(distances: np.ndarray, cfg: SelfComparisonConfig) -> np.ndarray:
    """N: what each image's score is multiplied by: 1 where some place of it is unlike the rest
    (its distance, :func:`self_maps`, reaches ``cfg.scale``: a factor of 1 keeps it whole), else
    ``cfg.repeated_score``: an image that repeats itself everywhere is normal unless its score
    says so ``1 / repeated_score`` times over. Zero-shot, the model's P(yes) and map rank a new
    product's images well but read its normal structure as a defect (a nut's hole, a cap's
    ring), above any threshold chosen on the training classes; the comparison with itself is
    untrained, its distances not fitted to them (docs/references.md, "The zero-shot
    decision")."""
    unlike = distances.reshape(len(distances), -1).max(1) >= cfg.scale
    return np.where(unlike, 1.0, cfg.repeated_score)
