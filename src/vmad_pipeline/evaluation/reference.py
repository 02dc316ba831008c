"""A training-free reference on the small preset's frozen features: mutual scoring (MuSc).

Each test patch is scored by its distance to the nearest patches of the *other* test images of
its class (Li et al., "MuSc: zero-shot industrial anomaly classification and segmentation with
mutual scoring of the unlabeled images", ICLR 2024): a normal patch finds a close match in most
other images, an anomalous one in few. Per other image the nearest-patch distance; per patch the
mean of the lowest ``fraction`` of those (MuSc's interval average: it stays low for a normal
patch even where some other images are anomalous). Features: two mid-level maps of the frozen
ImageNet EfficientNet-Lite0, averaged over 3 x 3 neighbourhoods (PatchCore's local aggregation,
Roth et al., CVPR 2022). Map = the patch scores upsampled and smoothed; image score = its max.

A different, transductive protocol: it reads the whole test set of a class at once (the model
reads one image), so it is reported apart, as what the frozen features alone achieve.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from vmad_pipeline.configs.evaluate import ReferenceConfig
from vmad_pipeline.evaluation.report import IMAGE_METRICS, PIXEL_METRICS, map_metrics, nan_to_none
from vmad_pipeline.evaluation.scores import map_max
from vmad_pipeline.models.references import mutual_scores, patch_features, smoothed

log = logging.getLogger(__name__)

PROTOCOL = (
    "training-free, transductive (MuSc-style mutual scoring): each test patch scored against "
    "the other test images of its class; not the model's protocol (one image at a time)"
)


def reference_maps(
    images: torch.Tensor,
    categories: list[str],
    cfg: ReferenceConfig,
    output_size: int,
    backbone: torch.nn.Module,
    *,
    progress: bool = False,
) -> np.ndarray:
    """Anomaly maps (N x output_size x output_size, float32) of every image, each class scored
    on its own images only."""
    maps = np.zeros((len(images), output_size, output_size), np.float32)
    groups = pd.Series(categories).groupby(categories).indices
    for _, idx in tqdm(groups.items(), desc="reference", disable=not progress, leave=False):
        feats = patch_features(images[idx], backbone, cfg.levels)
        maps[idx] = smoothed(mutual_scores(feats, cfg.fraction), output_size, cfg.blur_sigma)
    return maps


def reference_report(
    eval_set: pd.DataFrame, maps: np.ndarray, masks: list[np.ndarray], fpr_limit: float
) -> tuple[dict[str, Any], dict[str, float]]:
    """The image and pixel metrics of the reference per class and as the unweighted class mean
    (the model's definitions, ``metrics.md``); (report, flat dict for MLflow)."""
    labels = eval_set["label"].to_numpy().astype(np.int64)
    scores = map_max(maps)  # the model's map_max rule
    per_class = {}
    for cls, idx in eval_set.groupby("category").indices.items():
        per_class[cls] = map_metrics(
            labels[idx], scores[idx], [masks[i] for i in idx], [maps[i] for i in idx], fpr_limit
        )
    table = pd.DataFrame.from_dict(per_class, orient="index")
    names = IMAGE_METRICS + PIXEL_METRICS
    mean = {k: float(table[k].mean(skipna=True)) if len(table) else float("nan") for k in names}
    report = {
        "protocol": PROTOCOL,
        "mean": {k: nan_to_none(v) for k, v in mean.items()},
        "per_class": {c: {k: nan_to_none(v) for k, v in m.items()} for c, m in per_class.items()},
    }
    flat = {k: v for k, v in mean.items() if not np.isnan(v)}
    flat |= {f"{c}/{k}": v for c, m in per_class.items() for k, v in m.items() if not np.isnan(v)}
    return report, flat
