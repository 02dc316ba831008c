"""Evaluate: anomaly maps and scores on unseen classes, metrics per class, overlay figure."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline.configs import EvalConfig, from_dict

log = logging.getLogger(__name__)


def parse_eval_params(params: dict[str, Any]) -> EvalConfig:
    return from_dict(EvalConfig, {k: v for k, v in params.items() if k != "dataset"}, "evaluate")


def select_eval_set(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    taxonomy: dict[str, Any],
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The test images: the split's unseen classes (source test folders), or every class of
    ``evaluate.dataset.root`` when that parameter is set (any MVTec-layout tree)."""
    dataset = params.get("dataset") or {}
    if dataset.get("root"):
        from vmad_pipeline.datasets.mvtec import read_mvtec
        from vmad_pipeline.pipelines.ingest.nodes import apply_taxonomy

        name = dataset.get("name") or "external"
        rows = read_mvtec(dataset["root"], source=name, progress=params.get("progress", True))
        rows = apply_taxonomy(rows[rows["split"] == "test"].reset_index(drop=True), taxonomy)
        return rows, {name: str(dataset["root"])}
    from vmad_pipeline.pipelines.split.nodes import check_no_leak

    check_no_leak(splits)
    rows = manifest[
        manifest["category"].isin(splits["test_classes"]) & (manifest["split"] == "test")
    ]
    if rows.empty:
        raise ValueError("no test images for the split's test classes")
    return rows.reset_index(drop=True), roots


def predict_eval_set(
    trained: tuple, eval_set: pd.DataFrame, roots: dict[str, str], params: dict[str, Any]
) -> dict[str, Any]:
    from vmad_pipeline.inference.predictor import Predictor
    from vmad_pipeline.training.data import ImageTable
    from vmad_pipeline.training.device import autocast, resolve_placement

    cfg = parse_eval_params(params)
    model, tokenizer = trained
    device, dtype = resolve_placement(cfg.device, cfg.precision)
    model.to(device, dtype)
    table = ImageTable.load(eval_set, roots, model.config.sam.image_size, progress=cfg.progress)
    with autocast(device, dtype):
        pred = Predictor(model, tokenizer, max_new_tokens=cfg.max_new_tokens).predict(
            table.images,
            list(eval_set["category"]),
            output_size=cfg.eval_size,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
        )
    if not pred.seg_found.all():
        log.warning(
            "%d of %d answers had no [SEG]; the last token's state was used",
            int((~pred.seg_found).sum()),
            len(pred.seg_found),
        )
    return {
        "maps": pred.maps,
        "scores": pred.scores,
        "answers": pred.answers,
        "seg_found": pred.seg_found,
    }


def load_ground_truth(
    eval_set: pd.DataFrame, roots: dict[str, str], params: dict[str, Any]
) -> list[np.ndarray]:
    """The test masks at the evaluation size (binary; zeros for normal images), read once."""
    from vmad_pipeline.datasets.manifest import mask_file
    from vmad_pipeline.training.data import load_mask

    size = parse_eval_params(params).eval_size
    return [load_mask(mask_file(roots, r.source, r.mask_path), size) for r in eval_set.itertuples()]


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def compute_metrics(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, float], pd.DataFrame]:
    """Image AUROC, pixel AUROC and AUPRO per class and their unweighted class mean."""
    from vmad_pipeline.metrics import aupro, image_auroc, pixel_auroc

    cfg = parse_eval_params(params)
    labels = eval_set["label"].to_numpy()
    rows = []
    for cls, idx in eval_set.groupby("category").indices.items():
        m = [masks[i] for i in idx]
        p = [predictions["maps"][i] for i in idx]
        has_both = 0 < labels[idx].sum() < len(idx)
        rows.append(
            {
                "category": cls,
                "n_images": len(idx),
                "n_anomalous": int(labels[idx].sum()),
                "image_auroc": image_auroc(labels[idx], predictions["scores"][idx])
                if has_both
                else float("nan"),
                "pixel_auroc": pixel_auroc(m, p) if labels[idx].sum() else float("nan"),
                "aupro": aupro(m, p, fpr_limit=cfg.fpr_limit)
                if labels[idx].sum()
                else float("nan"),
                "seg_found_rate": float(np.mean(predictions["seg_found"][idx])),
            }
        )
    table = pd.DataFrame(rows)
    means = {k: float(table[k].mean(skipna=True)) for k in ("image_auroc", "pixel_auroc", "aupro")}
    report = {
        "mean": {k: _nan_to_none(v) for k, v in means.items()},
        "per_class": {
            r["category"]: {
                k: _nan_to_none(v) if isinstance(v, float) else v
                for k, v in r.items()
                if k != "category"
            }
            for r in rows
        },
        "settings": {
            "eval_size": cfg.eval_size,
            "score_source": "map_max",
            "aupro_fpr_limit": cfg.fpr_limit,
            "aupro": "exact (MVTec AD 2021)",
            "n_images": len(eval_set),
        },
    }
    flat = {k: v for k, v in means.items() if not math.isnan(v)}
    for r in rows:
        for k in ("image_auroc", "pixel_auroc", "aupro"):
            if not math.isnan(r[k]):
                flat[f"{r['category']}/{k}"] = r[k]
    log.info(
        "unseen classes: image AUROC %.3f, pixel AUROC %.3f, AUPRO %.3f",
        means["image_auroc"],
        means["pixel_auroc"],
        means["aupro"],
    )
    return report, flat, table


def plot_overlays(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    roots: dict[str, str],
    params: dict[str, Any],
):
    """For a few test images per class: image, ground truth, predicted anomaly map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vmad_pipeline.datasets.manifest import image_file
    from vmad_pipeline.training.data import load_rgb

    cfg = parse_eval_params(params)
    picks = []
    for _cls, group in eval_set.groupby("category"):
        anomalous = list(group.index[group["label"] == 1])
        normal = list(group.index[group["label"] == 0])
        picks += (anomalous[: max(1, cfg.n_overlays - 1)] + normal[:1])[: cfg.n_overlays]
    fig, axes = plt.subplots(len(picks), 3, figsize=(6, 2 * len(picks)), squeeze=False)
    for row, i in zip(axes, picks, strict=True):
        r = eval_set.loc[i]
        image = load_rgb(image_file(roots, r.source, r.image_path), cfg.eval_size)
        row[0].imshow(image)
        row[0].set_title(f"{r.category} / {r.defect_type or r.defect_name or 'good'}", fontsize=7)
        row[1].imshow(image)
        row[1].imshow(masks[i], alpha=0.5, cmap="Reds", vmin=0, vmax=1)
        row[1].set_title("ground truth", fontsize=7)
        row[2].imshow(image)
        row[2].imshow(predictions["maps"][i], alpha=0.6, cmap="jet", vmin=0, vmax=1)
        row[2].set_title(f"map (score {predictions['scores'][i]:.2f})", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig
