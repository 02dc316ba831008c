"""Training the defect generator on real defects: the anomalous images of the training classes,
their masks and defect types. Seeded and deterministic (one torch generator draws every batch,
crop, flip and noise plane); the result is kept on disk under a key of everything it depends on
(``generator_stage``), as the anomaly expert's stage 1 is (``training.expert_stage``)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from vmad_pipeline.configs.base import to_dict
from vmad_pipeline.configs.generate import GeneratorConfig
from vmad_pipeline.datasets.manifest import row_files
from vmad_pipeline.images import load_batch
from vmad_pipeline.synthesis.generator import DefectGenerator
from vmad_pipeline.training.expert_stage import cached_stage
from vmad_pipeline.training.state import stable_hash

log = logging.getLogger(__name__)


@dataclass
class Defects:
    """Real defects in memory: images (N x 3 x S x S uint8), masks (N x S x S uint8 0/1), the
    index of each one's type in ``types``."""

    images: torch.Tensor
    masks: torch.Tensor
    type_idx: torch.Tensor
    types: tuple[str, ...]


def defect_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The anomalous rows with a defect type and a mask (what the generator learns from)."""
    keep = (rows["label"] == 1) & rows["defect_type"].astype(bool) & rows["mask_path"].astype(bool)
    picked = rows[keep].sort_values(["category", "image_path"])
    if picked.empty:
        raise ValueError("no anomalous image with a mask and a defect type to train the generator")
    return picked


def load_defects(rows: pd.DataFrame, roots: dict[str, str], size: int) -> Defects:
    """The defects of ``rows`` (:func:`defect_rows`) read at ``size`` (held in memory: a few
    thousand images at 128 px are tens of MB)."""
    picked = defect_rows(rows)
    files, masks = row_files(picked, roots)
    images, masks_t = load_batch(files, masks, size)
    types = tuple(sorted(set(picked["defect_type"])))
    idx = torch.tensor([types.index(t) for t in picked["defect_type"]])
    return Defects(images, masks_t, idx, types)


def build_generator(cfg: GeneratorConfig, types: int) -> DefectGenerator:
    return DefectGenerator(types=types, width=cfg.width, depth=cfg.depth, embed_dim=cfg.embed_dim)


def generator_loss(
    out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, grad_weight: float
) -> torch.Tensor:
    """L1 inside the mask plus ``grad_weight`` x the L1 of the horizontal and vertical image
    gradients near it (pairs with a pixel inside): a defect's edges and texture, not only its
    mean colour (L1 alone paints blurred defects). Both normalised by the masked area."""
    area = mask.sum().clamp_min(1.0)
    pixel = ((out - target).abs() * mask).sum() / (3 * area)
    if grad_weight == 0:
        return pixel
    grad = out.new_zeros(())
    for dim in (-1, -2):
        d_out, d_target = out.diff(dim=dim), target.diff(dim=dim)
        near = torch.maximum(
            mask.narrow(dim, 0, mask.shape[dim] - 1), mask.narrow(dim, 1, mask.shape[dim] - 1)
        )
        grad = grad + ((d_out - d_target).abs() * near).sum() / (3 * area)
    return pixel + grad_weight * grad


def crop_batch(
    defects: Defects, idx: torch.Tensor, crop: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops of side ``crop`` around each defect (centred on a random mask pixel), randomly
    flipped and rotated: images in [0, 1] (B x 3 x c x c), masks (B x 1 x c x c), types (B)."""
    size = defects.images.shape[-1]
    images, masks = [], []
    for i in idx.tolist():
        ys, xs = torch.nonzero(defects.masks[i], as_tuple=True)
        j = int(torch.randint(len(ys), (1,), generator=gen)) if len(ys) else 0
        cy, cx = (int(ys[j]), int(xs[j])) if len(ys) else (size // 2, size // 2)
        top = min(max(cy - crop // 2, 0), size - crop)
        left = min(max(cx - crop // 2, 0), size - crop)
        img = defects.images[i, :, top : top + crop, left : left + crop]
        msk = defects.masks[i, top : top + crop, left : left + crop][None]
        k = int(torch.randint(4, (1,), generator=gen))
        img, msk = torch.rot90(img, k, (1, 2)), torch.rot90(msk, k, (1, 2))
        if bool(torch.randint(2, (1,), generator=gen)):
            img, msk = img.flip(2), msk.flip(2)
        images.append(img)
        masks.append(msk)
    return torch.stack(images).float() / 255.0, torch.stack(masks).float(), defects.type_idx[idx]


def train_generator(defects: Defects, cfg: GeneratorConfig) -> tuple[DefectGenerator, list[float]]:
    """Train a generator for ``cfg.steps`` steps (AdamW, cosine decay) on crops of ``defects``.
    Returns it (eval mode) and the loss per step."""
    torch.manual_seed(cfg.seed)
    model = build_generator(cfg, len(defects.types)).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    crop = min(cfg.crop, defects.images.shape[-1])
    n, losses = len(defects.type_idx), []
    bar = tqdm(range(cfg.steps), desc="defect generator", disable=not cfg.progress)
    for _ in bar:
        idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen)
        images, masks, types = crop_batch(defects, idx, crop, gen)
        noise = torch.randn(masks.shape, generator=gen)
        out = model(images, masks, types, noise)
        loss = generator_loss(out, images, masks, cfg.grad_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return model.eval(), losses


def generator_key(cfg: GeneratorConfig, rows: pd.DataFrame) -> str:
    """What the generator computes from: its settings (``progress`` and ``cache_dir`` left out)
    and the defects it learns from (files by content hash where known), with the seed."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("progress", "cache_dir")}
    cols = [c for c in ("source", "image_path", "mask_path", "defect_type", "sha256") if c in rows]
    data = defect_rows(rows)[cols].astype(str).values.tolist()
    return stable_hash({"version": 1, "generator": settings, "data": data})[:16]


def generator_stage(
    rows: pd.DataFrame, roots: dict[str, str], cfg: GeneratorConfig, *, cached_only: bool = False
) -> dict:
    """The trained generator for ``rows``' defects ({"key", "state", "types", "config",
    "losses", "seconds", "reused"}): read from ``cfg.cache_dir`` when trained before on the same
    inputs, else trained here and written there atomically. ``cached_only``: never train here
    (the ranks of a run over several machines read the one generator)."""
    key = generator_key(cfg, rows)

    def compute() -> dict:
        defects = load_defects(rows, roots, cfg.image_size)
        model, losses = train_generator(defects, cfg)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {
            "key": key,
            "state": state,
            "types": list(defects.types),
            "config": to_dict(cfg),
            "losses": losses,
        }

    hint = (
        "run `kedro run --pipeline train --to-nodes train_expert,train_generator` first, where "
        "every node can read its output"
    )
    path = Path(cfg.cache_dir) / f"{key}.pt"
    return cached_stage(
        path, compute, cached_only=cached_only, what="the defect generator", hint=hint
    )


def at_size(cfg: GeneratorConfig, size: int) -> GeneratorConfig:
    """``cfg`` for images of side ``size`` (the crop no larger than the image)."""
    return dataclasses.replace(cfg, image_size=size, crop=min(cfg.crop, size))


def load_generator(stage: dict) -> DefectGenerator:
    """The generator of a :func:`generator_stage` result, in eval mode on the CPU."""
    cfg = GeneratorConfig(**{**stage["config"], "progress": False})
    model = build_generator(cfg, len(stage["types"]))
    model.load_state_dict(stage["state"])
    return model.eval()


__all__ = [
    "Defects",
    "at_size",
    "defect_rows",
    "generator_key",
    "generator_loss",
    "generator_stage",
    "load_defects",
    "load_generator",
    "train_generator",
]
