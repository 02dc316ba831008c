"""Evaluation with k normal references of each test class (docs/evaluation.md, "References").

References are drawn, seeded, from each test class's normal *training* images, never from its
test images (a reference whose content equals a test image's is dropped and said so); a larger k
holds the smaller k's references (one permutation per class). At each k the
nearest-normal-patch baseline (``models.references``: each patch's distance to the nearest
reference patch on the frozen features; image score = the map's max) is scored with the
model's metrics, and decides with a threshold chosen from the references alone
(:func:`references_threshold`), so the decision needs no defect image.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from vmad_pipeline.configs.evaluate import ReferencesConfig
from vmad_pipeline.evaluation.reference import reference_report
from vmad_pipeline.evaluation.scores import map_max
from vmad_pipeline.evaluation.threshold_rules import decision_metrics, references_threshold
from vmad_pipeline.models.references import NormalMemory, patch_features, smoothed

log = logging.getLogger(__name__)

PROTOCOL = (
    "nearest-normal-patch baseline (PatchCore / AnomalyDINO-style few-shot scoring) on the "
    "frozen features: each test patch scored by its distance to the nearest patch of k normal "
    "training images of its class; not the model"
)


def reference_pool(rows: pd.DataFrame, eval_set: pd.DataFrame) -> pd.DataFrame:
    """The normal training images (``split == train``, label 0) of the eval set's classes in its
    sources. A row whose content (``sha256``) equals a test image's is dropped (a warning names
    how many): a reference is never a test image."""
    keep = (
        (rows["split"] == "train")
        & (rows["label"] == 0)
        & rows["category"].isin(set(eval_set["category"]))
        & rows["source"].isin(set(eval_set["source"]))
    )
    pool = rows[keep]
    if "sha256" in pool and "sha256" in eval_set:
        same = pool["sha256"].isin(set(eval_set["sha256"]))
        if same.any():
            log.warning(
                "%d normal training image(s) equal a test image in content: not used as references",
                int(same.sum()),
            )
            pool = pool[~same]
    return pool.sort_values(["category", "source", "image_path"]).reset_index(drop=True)


def draw_references(pool: pd.DataFrame, k: int, seed: int) -> dict[str, pd.DataFrame]:
    """k references per class of ``pool``, seeded by (``seed``, class name): the first k of one
    permutation per class, so a larger k holds the smaller k's. A class with fewer than k
    normal images gives all it has (a warning names it)."""
    out = {}
    for cls, rows in pool.groupby("category", sort=True):
        rows = rows.sort_values(["source", "image_path"])  # the draw ignores the input's order
        rng = np.random.default_rng([seed, zlib.crc32(str(cls).encode())])
        order = rng.permutation(len(rows))
        if len(rows) < k:
            log.warning(
                "class %s has %d normal training images, fewer than k = %d", cls, len(rows), k
            )
        out[str(cls)] = rows.iloc[order[:k]].reset_index(drop=True)
    return out


@dataclass
class ShotMaps:
    maps: np.ndarray  # N x S x S float32: the baseline's map of every eval image
    thresholds: dict[str, float | None]  # per class: the references-only image threshold
    loo_scores: dict[str, list[float]]  # per class: the references' leave-one-out scores
    n_references: dict[str, int]


def _features(images: torch.Tensor, backbone: torch.nn.Module, cfg: ReferencesConfig):
    """One feature rule for the images and their references."""
    return patch_features(images, backbone, cfg.levels, stride=cfg.stride, normalise=True)


@dataclass
class ClassFeatures:
    """The evaluated images' patch features by class, computed once for every k."""

    n_images: int
    by_class: dict[str, tuple[np.ndarray, torch.Tensor]]  # class -> (image indices, features)


def class_features(
    images: torch.Tensor, categories: list[str], backbone: torch.nn.Module, cfg: ReferencesConfig
) -> ClassFeatures:
    """The features of ``images`` (uint8 N x 3 x S x S at ``cfg.image_size``) by class."""
    groups = pd.Series(categories).groupby(categories).indices
    by_class = {str(c): (idx, _features(images[idx], backbone, cfg)) for c, idx in groups.items()}
    return ClassFeatures(len(images), by_class)


def shot_maps(
    test: ClassFeatures,
    references: dict[str, torch.Tensor],
    backbone: torch.nn.Module,
    cfg: ReferencesConfig,
    output_size: int,
    *,
    seed: int = 0,
) -> ShotMaps:
    """The baseline's maps of the evaluated images (``test``: :func:`class_features`), each
    class against its ``references`` (uint8 k x 3 x S x S), and each class's references-only
    threshold. A class without references gets zero maps and no threshold."""
    maps = np.zeros((test.n_images, output_size, output_size), np.float32)
    thresholds, loo, counts = {}, {}, {}
    for cls, (idx, feats) in test.by_class.items():
        refs = references.get(cls)
        counts[cls] = 0 if refs is None else len(refs)
        if refs is None or not len(refs):
            thresholds[cls], loo[cls] = None, []
            continue
        ref_feats = _features(refs, backbone, cfg)
        memory = NormalMemory.build(ref_feats, max_patches=cfg.max_patches, seed=seed)
        maps[idx] = smoothed(memory.distances(feats), output_size, cfg.blur_sigma)
        if len(refs) >= 2:
            own = smoothed(memory.leave_one_out(ref_feats), output_size, cfg.blur_sigma)
            loo[cls] = [float(v) for v in map_max(own)]
        else:
            loo[cls] = []
        thresholds[cls] = references_threshold(np.array(loo[cls]), cfg.threshold)
    return ShotMaps(maps, thresholds, loo, counts)


def shot_decision(
    eval_set: pd.DataFrame, scores: np.ndarray, thresholds: dict[str, float | None]
) -> dict[str, Any] | None:
    """The decision at each class's references-only threshold, pooled over the classes that have
    one: confusion counts, precision, recall, F1 and the false-positive rate; None when no class
    has a threshold (k < 2)."""
    rows = eval_set["category"].map(lambda c: thresholds.get(c) is not None).to_numpy(bool)
    if not rows.any():
        return None
    at = eval_set["category"].map(thresholds).to_numpy()[rows].astype(np.float64)
    labels = eval_set["label"].to_numpy()[rows]
    out = decision_metrics(labels, scores[rows] - at, 0.0)  # per-class thresholds as one cut
    out.pop("threshold")
    out["fpr"] = out["fp"] / (out["fp"] + out["tn"]) if out["fp"] + out["tn"] else float("nan")
    out["classes"] = int(len(set(eval_set["category"][rows])))
    return out


def decision_numbers(decision: dict[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a :func:`shot_decision` as MLflow metrics
    (``<prefix>decision/<name>``)."""
    return {
        f"{prefix}decision/{name}": v
        for name, v in (decision or {}).items()
        if isinstance(v, float) and np.isfinite(v)
    }


def shot_report(
    eval_set: pd.DataFrame,
    roots: dict[str, str],
    masks: list[np.ndarray],
    pool: pd.DataFrame,
    shots: tuple[int, ...],
    seed: int,
    cfg: ReferencesConfig,
    eval_size: int,
    fpr_limit: float,
    backbone: torch.nn.Module,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The baseline at every k > 0 of ``shots``: ``{"<k>": {mean, per_class, decision,
    references, thresholds, loo_scores}}`` and the flat MLflow metrics (``<k>/...``)."""
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.images import load_batch

    images, _ = load_batch(row_files(eval_set, roots)[0], None, cfg.image_size)
    test = class_features(images, list(eval_set["category"]), backbone, cfg)  # once for every k
    out, flat = {}, {}
    for k in sorted(s for s in shots if s > 0):
        drawn = draw_references(pool, k, seed)
        refs = {
            c: load_batch(row_files(r, roots)[0], None, cfg.image_size)[0] for c, r in drawn.items()
        }
        found = shot_maps(test, refs, backbone, cfg, eval_size, seed=seed)
        report, numbers = reference_report(eval_set, found.maps, masks, fpr_limit)
        report.pop("protocol")
        decision = shot_decision(eval_set, map_max(found.maps), found.thresholds)
        out[str(k)] = {
            **report,
            "decision": decision,
            "references": {c: list(r["image_path"]) for c, r in drawn.items()},
            "n_references": found.n_references,
            "thresholds": found.thresholds,
            "loo_scores": found.loo_scores,
        }
        flat |= {f"{k}/{name}": v for name, v in numbers.items()}
        flat |= decision_numbers(decision, f"{k}/")
        mean = report["mean"]
        log.info(
            "nearest-normal-patch baseline, k = %d: image AUROC %s, pixel AUROC %s, AUPRO %s; "
            "references-only threshold: FPR %s, recall %s",
            k,
            *(mean[m] for m in ("image_auroc", "pixel_auroc", "aupro")),
            *((decision or {}).get(m) for m in ("fpr", "recall")),
        )
    return out, flat
