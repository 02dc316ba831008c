"""Comparison with normal references on frozen patch features: what an image looks like against
normal images of the same product.

Two ways of comparing, one set of features:

* **shots**: a memory of the patches of k normal images (a PatchCore-style memory bank, Roth et
  al., CVPR 2022, with its greedy coreset when it grows past ``max_patches``); each patch of an
  image is scored by its distance to the nearest memory patch (AnomalyDINO / PatchCore's
  few-shot scoring);
* **batch**: no labels; each patch is scored against the other images of the same product in
  the batch (MuSc's mutual scoring, Li et al., ICLR 2024): for each other image the nearest-patch
  distance, then the mean of the lowest ``fraction`` of those, which stays low for a normal
  patch even where some of the other images are anomalous. Valid when most images are normal.

Features: chosen levels of a frozen backbone resized to the finest chosen level's grid,
concatenated, averaged over 3 x 3 neighbourhoods (PatchCore's local aggregation), optionally
L2-normalised per patch. Pure torch: no paths, no training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from vmad_pipeline.models.efficientnet import to_grid

CHUNK = 4096  # query patches per distance block (bounds the distance matrix's memory)


@torch.no_grad()
def patch_features(
    images: torch.Tensor,
    backbone: torch.nn.Module,
    levels: tuple[int, ...],
    *,
    batch_size: int = 16,
    normalise: bool = False,
    stride: int | None = None,
) -> torch.Tensor:
    """uint8 N x 3 x S x S -> N x C x h x w: :func:`level_features` of the backbone's levels, in
    batches of ``batch_size``."""
    out = []
    for s in range(0, len(images), batch_size):
        maps = backbone(images[s : s + batch_size].float() / 255.0)
        grid = images.shape[-1] // stride if stride else None
        out.append(level_features(maps, levels, grid, normalise=normalise))
    return torch.cat(out)


def level_features(
    maps, levels: tuple[int, ...], grid: int | None, *, normalise: bool = False
) -> torch.Tensor:
    """A backbone's feature maps (one B x C_l x h_l x w_l per level) -> B x C x grid x grid: the
    chosen ``levels``, each averaged over its 3 x 3 neighbourhood, at one grid, concatenated.
    ``grid``: each level is averaged at its own resolution before it is resized (PatchCore's
    order); None: the finest chosen level's grid, averaged after resizing (the transductive
    reference's order, kept as measured). ``normalise``: each patch's feature scaled to unit
    length."""
    chosen = [maps[i] for i in levels]
    if grid:  # each level aggregated at its own resolution, then resized (PatchCore)
        feats = torch.cat([to_grid(_local(m), grid) for m in chosen], 1)
    else:
        size = max(m.shape[-1] for m in chosen)
        feats = _local(torch.cat([to_grid(m, size) for m in chosen], 1))
    return F.normalize(feats, dim=1) if normalise else feats


# The views a reference is read in when flips are on: itself, flipped left-right, up-down, and
# both (a half turn). AnomalyDINO's reference augmentation (Damm et al., WACV 2025): a normal
# patch of a test image then finds its like among a few references even where the product's parts
# sit mirrored. Measured on the default split's unseen classes (docs/references.md).
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def flipped(images: torch.Tensor) -> torch.Tensor:
    """N x ... x H x W -> (V N) x ... x H x W: the images in each view of :data:`FLIPS`, view
    after view."""
    return torch.cat([images.flip(dims) if dims else images for dims in FLIPS])


def views(flips: bool) -> int:
    """How many views of each reference a memory holds: :data:`FLIPS`' with flips, else one."""
    return len(FLIPS) if flips else 1


def side_by_side(features: torch.Tensor, views: int) -> torch.Tensor:
    """(V N) x C x h x w, view after view (:func:`flipped`'s order) -> N x C x h x (V w): each
    image's views side by side as one wider map, so every rule that reads an image's patches (a
    memory, leave-one-out without it, the owner of a patch, batch pools) reads its views with it.
    Each view was aggregated on its own before (no neighbourhood spans two views)."""
    if views < 1 or len(features) % views:
        raise ValueError(f"{len(features)} feature maps are not {views} views of the same images")
    return torch.cat(features.split(len(features) // views), dim=-1)


def _local(features: torch.Tensor) -> torch.Tensor:
    """Each position's mean over its 3 x 3 neighbourhood (PatchCore's local aggregation)."""
    return F.avg_pool2d(features, 3, stride=1, padding=1, count_include_pad=False)


def patches(features: torch.Tensor) -> torch.Tensor:
    """N x C x h x w -> (N h w) x C."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).float()


def nearest_distance(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """P x C, M x C -> P: each query's Euclidean distance to its nearest memory row, in blocks of
    :data:`CHUNK` queries. The nearest row is found with cdist's matrix-product form (fast, but
    it loses ~1e-3 near zero), then its distance is computed exactly: a patch equal to a memory
    patch scores 0."""
    out = []
    for s in range(0, len(queries), CHUNK):
        block = queries[s : s + CHUNK]
        nearest = torch.cdist(block, memory).argmin(1)
        out.append((block - memory[nearest]).norm(dim=1))
    return torch.cat(out) if out else queries.new_zeros(0)


PRESAMPLE = 4  # the greedy coreset runs on at most this many times ``size`` rows (a seeded draw)


def coreset(patches: torch.Tensor, size: int, *, seed: int = 0, dim: int = 128) -> torch.Tensor:
    """Indices of ``size`` rows of ``patches`` (P x C) chosen by greedy k-centre selection (each
    next row the one farthest from those chosen), on a random projection to ``dim`` dimensions as
    PatchCore does; all rows when there are no more than ``size``. Past :data:`PRESAMPLE` x
    ``size`` rows the greedy pass runs on a seeded random draw of that many: over every patch of
    100 images (102,400 rows, size 4,096) it took 26 s on 2 cores."""
    n = len(patches)
    if n <= size:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    if n > PRESAMPLE * size:
        pool = torch.randperm(n, generator=gen)[: PRESAMPLE * size].sort().values
        return pool[coreset(patches[pool], size, seed=seed, dim=dim)]
    proj = patches
    if patches.shape[1] > dim:
        proj = patches @ torch.randn(patches.shape[1], dim, generator=gen) / dim**0.5
    # squared distances as |x|^2 - 2 x.c + |c|^2, one matrix-vector product a step: the same
    # choices as cdist's (4,094 of 4,096 on 16,384 random rows) in 0.59 s instead of 2.05 s
    square = (proj * proj).sum(1)
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    nearest = (square - 2 * torch.mv(proj, proj[chosen[-1]]) + square[chosen[-1]]).clamp_min(0)
    for _ in range(size - 1):
        chosen.append(int(nearest.argmax()))
        c = chosen[-1]
        torch.minimum(nearest, square - 2 * torch.mv(proj, proj[c]) + square[c], out=nearest)
    return torch.tensor(chosen)


@dataclass
class NormalMemory:
    """The patches of k normal reference images of one product (a coreset of them past
    ``max_patches``), and the grid they came from."""

    patches: torch.Tensor  # M x C
    grid: tuple[int, int]  # h, w of the references' feature maps
    n_images: int
    owners: torch.Tensor | None = None  # M: the reference each patch came from

    @classmethod
    def build(cls, features: torch.Tensor, *, max_patches: int, seed: int = 0) -> NormalMemory:
        """From the references' features (k x C x h x w)."""
        if not len(features):
            raise ValueError("a reference memory needs at least one normal image")
        rows = patches(features)
        keep = coreset(rows, max_patches, seed=seed)
        grid = (features.shape[-2], features.shape[-1])
        owners = keep // (grid[0] * grid[1])
        return cls(rows[keep].contiguous(), grid, len(features), owners)

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """N x C x h x w -> N x h x w: each patch's distance to its nearest memory patch."""
        n, _, h, w = features.shape
        return nearest_distance(patches(features), self.patches).view(n, h, w)

    def leave_one_out(self, features: torch.Tensor) -> torch.Tensor:
        """The references' own maps (k x h x w), each against the other references' patches
        (every patch, not the coreset): what a normal image of this product scores. Needs two
        or more references."""
        k = len(features)
        if k < 2:
            raise ValueError("leave-one-out scores need at least two references")
        out = []
        for i in range(k):
            others = patches(torch.cat([features[:i], features[i + 1 :]]))
            out.append(nearest_distance(patches(features[i : i + 1]), others))
        return torch.stack(out).view(k, *features.shape[-2:])


def mutual_scores(features: torch.Tensor, fraction: float) -> torch.Tensor:
    """N x C x h x w features of one product's images -> N x h x w patch scores: for each patch,
    the mean of the lowest ``fraction`` (at least one) of its nearest-patch distances to each
    other image. One image alone has nothing to be scored against: zeros."""
    n, _, h, w = features.shape
    if n < 2:
        return torch.zeros(n, h, w)
    flat = features.flatten(2).transpose(1, 2).float()  # (N, P, C)
    # Centred: distances are unchanged, and cdist's fast (matrix-product) form loses less.
    flat = flat - flat.mean((0, 1))
    keep = max(1, round(fraction * (n - 1)))
    scores = torch.empty(n, h * w)
    for i in range(n):
        nearest = torch.stack(
            [torch.cdist(flat[i], flat[j]).amin(1) for j in range(n) if j != i], 1
        )  # (P, N - 1)
        scores[i] = nearest.sort(1).values[:, :keep].mean(1)
    return scores.view(n, h, w)


def smoothed(scores: torch.Tensor, size: int, sigma: float) -> np.ndarray:
    """N x h x w patch scores -> N x size x size maps: bilinearly upsampled, then blurred by a
    Gaussian of ``sigma`` pixels (+-4 sigma; none at 0). The comparisons' maps (the transductive
    reference, the k-shot baseline, the image against itself) are made so."""
    up = F.interpolate(scores[:, None], (size, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        kernel = 2 * int(4 * sigma + 0.5) + 1  # +-4 sigma
        up = gaussian_blur(up, [kernel, kernel], [sigma, sigma])
    return up[:, 0].numpy()
