"""Validation while training: a held-out slice of the training classes (never a test class),
asked the segmentation question; its losses and pixel AUROC (``metrics.pixel``) go to the curves,
MLflow and the progress bar, and ``train.keep: best`` keeps the best state by that AUROC."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vmad_pipeline.metrics.pixel import pixel_auroc
from vmad_pipeline.models.amoe_lora import routing_inputs
from vmad_pipeline.training.data import collate, model_inputs
from vmad_pipeline.training.objective import answer_tokens

MAX_SIDE = 128  # the AUROC is taken on maps and masks at most this side (a 1024 px run: 64x less)


def validation_rows(
    rows: pd.DataFrame, fraction: float, max_images: int, seed: int, anomalous: bool = True
):
    """(training rows, validation rows): ``fraction`` of each class's images (at least one where
    the fraction is > 0 and the class has two or more), at most ``max_images`` in all, drawn with
    ``seed``; normal and anomalous images alike, or (``anomalous`` false) normal ones only."""
    if fraction <= 0:
        return rows, rows.iloc[0:0]
    rng = np.random.default_rng(seed)
    held: list[int] = []
    pool = rows if anomalous else rows[rows["label"] == 0]
    for _, group in pool.groupby("category", sort=True):
        n = min(len(group) - 1, max(1, round(fraction * len(group))))
        held += rng.choice(group.index.to_numpy(), size=max(n, 0), replace=False).tolist()
    if len(held) > max_images:
        held = rng.choice(np.array(held), size=max_images, replace=False).tolist()
    held_set = set(held)
    keep = [i not in held_set for i in rows.index]
    return rows[keep], rows.loc[sorted(held_set)]


@torch.no_grad()
def validate(engine, model, samples, cfg) -> dict[str, float]:
    """Losses (mean CE, BCE, DICE over the slice) and the pixel AUROC, the same on every rank:
    each rank scores every ``world``-th image, rank 0 pools them."""

    model.eval()
    # Every rank runs the same number of forward passes (FSDP gathers weights in each): a rank
    # with fewer images runs one more on a repeated image and drops its result.
    mine = list(range(engine.rank, len(samples), engine.world))
    step = max(1, cfg.micro_batch)
    chunks = [mine[lo : lo + step] for lo in range(0, len(mine), step)]
    most = math.ceil(math.ceil(len(samples) / engine.world) / step)  # the busiest rank's
    chunks += [None] * (most - len(chunks))
    sums, counts, maps, masks = np.zeros(3), np.zeros(2), [], []
    for chunk in chunks:
        items = [samples[(0, i)] for i in (chunk or [0])]
        batch = collate(items, samples.tokenizer.pad_token_id)
        if not batch["size"]:
            continue
        inputs = model_inputs(batch, model, engine.device)
        inputs.pop("class_idx", None)  # no DSSL: its queues stay as training left them
        inputs.pop("oracle", None)
        # validation stays out of AMoE-LoRA's router statistics (no-op for plain LoRA)
        with engine.autocast(), routing_inputs(model.llm, record=False):
            out = engine.model(**inputs)
        if chunk is None:
            continue
        tokens = answer_tokens(batch["labels"])
        n = len(out.seg_index)
        sums += [_f(out.ce) * tokens, _f(out.bce) * n, _f(out.dice) * n]
        counts += [tokens, n]
        if out.mask_logits is not None:
            probs = _small(out.mask_logits.float().sigmoid()[:, None])
            truth = _small(batch["masks"][out.seg_index.cpu()].float()[:, None]) > 0.5
            maps += list(probs[:, 0].cpu().numpy())
            masks += list(truth[:, 0].cpu().numpy())
    pooled = engine.gather_objects((sums, counts, maps, masks))
    result = _summarise(pooled, cfg.loss) if engine.is_main else None
    return engine.broadcast_object(result)


def _f(value) -> float:
    return 0.0 if value is None else float(value)


def _small(x: torch.Tensor) -> torch.Tensor:
    side = x.shape[-1]
    return x if side <= MAX_SIDE else F.interpolate(x, size=(MAX_SIDE, MAX_SIDE), mode="area")


def _summarise(pooled, weights) -> dict[str, float]:
    sums = sum(p[0] for p in pooled)
    counts = sum(p[1] for p in pooled)
    maps = [m for p in pooled for m in p[2]]
    masks = [m for p in pooled for m in p[3]]
    ce = sums[0] / counts[0] if counts[0] else float("nan")
    bce = sums[1] / counts[1] if counts[1] else float("nan")
    dice = sums[2] / counts[1] if counts[1] else float("nan")
    loss = weights.txt * ce + weights.bce * bce + weights.dice * dice
    try:
        auroc = pixel_auroc(masks, maps) if maps else float("nan")
    except ValueError:  # no anomalous pixel (or no normal one) in the slice
        auroc = float("nan")
    return {
        "loss": loss,
        "ce": ce,
        "bce": bce,
        "dice": dice,
        "pixel_auroc": auroc,
        "images": len(maps),
    }
