"""Painting generated defects: one uint8 image at a time (``Painter``, what training samples
use), and a whole MVTec-layout tree of them (``generate_tree``) that the ``mvtec`` reader ingests
like any other source::

    <class>/train/good/NNN.png                     normal images not painted on
    <class>/test/good/NNN.png                      the normal images painted on
    <class>/test/<defect_type>/NNN.png             a generated defect of that type
    <class>/ground_truth/<defect_type>/NNN_mask.png   its mask (0 / 255)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from vmad_pipeline.synthesis.generator import DefectGenerator


class Painter:
    """A trained generator that paints one image at a time, in no_grad on the CPU (picklable:
    DataLoader workers and training processes receive it with their dataset)."""

    def __init__(
        self, model: DefectGenerator, types: tuple[str, ...] | list[str], key: str = ""
    ) -> None:
        self.model, self.types = model.eval(), tuple(types)
        self.key = key  # the generator's cache key (a training resumes only with the same one)
        if len(self.types) != model.types:
            raise ValueError(f"{len(self.types)} type names for a {model.types}-type generator")

    @torch.no_grad()
    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, type_idx: int, gen: torch.Generator
    ) -> torch.Tensor:
        """``image`` (3 x S x S uint8) with a defect of ``types[type_idx]`` painted inside
        ``mask`` (S x S, > 0 inside; S a multiple of 2 ** depth); the noise plane is drawn from
        ``gen``. Outside the mask the result is ``image``, bit for bit."""
        size = image.shape[-1]
        noise = torch.randn((1, 1, size, size), generator=gen)
        x = image[None].float() / 255.0
        m = (mask > 0)[None, None].float()
        out = self.model(x, m, torch.tensor([type_idx]), noise)[0]
        painted = (out * 255.0).round().clamp(0, 255).to(torch.uint8)
        return torch.where(mask[None] > 0, painted, image)


def move_mask(mask: torch.Tensor, max_shift: float, gen: torch.Generator) -> torch.Tensor:
    """``mask`` (S x S) translated by up to ``max_shift`` x S pixels each way, without wrapping
    around; the mask itself when the move would push it out of the image."""
    size = mask.shape[-1]
    limit = int(max_shift * size)
    dy, dx = (torch.randint(-limit, limit + 1, (2,), generator=gen)).tolist() if limit else (0, 0)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if not len(ys):
        return mask
    dy = int(np.clip(dy, -int(ys.min()), size - 1 - int(ys.max())))
    dx = int(np.clip(dx, -int(xs.min()), size - 1 - int(xs.max())))
    return torch.roll(mask, (dy, dx), (0, 1))  # no pixel crosses the border after the clip


@dataclass
class Pool:
    """What a tree is painted from: normal images and real masks (uint8 tensors at one side)
    with their classes and the masks' defect types."""

    normals: torch.Tensor  # N x 3 x S x S
    normal_classes: list[str]
    normal_paths: list[str]  # the manifest's image paths (recorded in the index)
    masks: torch.Tensor  # M x S x S (real defect masks)
    mask_classes: list[str]
    mask_types: list[str]


def _mask_for(pool: Pool, cls: str, dtype: str, gen: torch.Generator, how: str, shift: float):
    """A mask for a ``dtype`` defect on class ``cls``: a real one of that type (of the class when
    it has some, else of any class), moved; or a random blob."""
    from vmad_pipeline.training.samples import blob_mask

    size = pool.normals.shape[-1]
    if how == "blob":
        return blob_mask(size, gen).to(torch.uint8)
    same = [i for i, t in enumerate(pool.mask_types) if t == dtype and pool.mask_classes[i] == cls]
    anyc = [i for i, t in enumerate(pool.mask_types) if t == dtype]
    options = same or anyc
    pick = options[int(torch.randint(len(options), (1,), generator=gen))]
    return move_mask(pool.masks[pick], shift, gen)


def generate_tree(
    pool: Pool, painter: Painter, cfg, *, progress: bool = False
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Every class of ``pool.normals`` painted with every type of ``painter`` ``cfg.per_type``
    times (masks by ``cfg.masks``: real, moved by up to ``cfg.max_shift``; or blob), seeded by
    ``cfg.seed``. Returns the tree ({relative path: uint8 array}) and its index (one row per
    generated image: class, defect_type, image, mask, base (the normal image's tree path),
    source_image (its manifest path))."""
    gen = torch.Generator().manual_seed(cfg.seed)
    tree: dict[str, np.ndarray] = {}
    rows = []
    classes = sorted(set(pool.normal_classes))
    for cls in tqdm(classes, desc="generate", disable=not progress):
        idx = [i for i, c in enumerate(pool.normal_classes) if c == cls]
        bases = idx[: (len(idx) + 1) // 2]  # painted on, and kept as test/good
        for k, i in enumerate(idx):
            folder = "test" if i in bases else "train"
            tree[f"{cls}/{folder}/good/{k:03d}.png"] = _hwc(pool.normals[i])
        for dtype in painter.types:
            for n in range(cfg.per_type):
                b = bases[n % len(bases)]
                mask = _mask_for(pool, cls, dtype, gen, cfg.masks, cfg.max_shift)
                image = painter(pool.normals[b], mask, painter.types.index(dtype), gen)
                name = f"{n:03d}"
                tree[f"{cls}/test/{dtype}/{name}.png"] = _hwc(image)
                tree[f"{cls}/ground_truth/{dtype}/{name}_mask.png"] = mask.numpy() * 255
                rows.append(
                    {
                        "category": cls,
                        "defect_type": dtype,
                        "image": f"{cls}/test/{dtype}/{name}.png",
                        "mask": f"{cls}/ground_truth/{dtype}/{name}_mask.png",
                        "base": f"{cls}/test/good/{idx.index(b):03d}.png",
                        "source_image": pool.normal_paths[b],
                    }
                )
    return tree, pd.DataFrame(rows)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).contiguous().numpy()


__all__ = ["Painter", "Pool", "generate_tree", "move_mask"]
