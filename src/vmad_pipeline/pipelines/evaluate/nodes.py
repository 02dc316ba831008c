"""Evaluate: anomaly maps, scores and answers on unseen classes; metrics per class; MMAD."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline.pipelines.evaluate.params import parse_eval_params

log = logging.getLogger(__name__)


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
        test = rows[rows["split"] == "test"].reset_index(drop=True)
        # MVTec AD's folder names resolve through its taxonomy map, then the type names.
        return apply_taxonomy(test, taxonomy, datasets={name: "mvtec"}), {
            name: str(dataset["root"])
        }
    from vmad_pipeline.splitting import split_rows

    _, rows = split_rows(manifest, splits)  # the one selection rule, leak check included
    if rows.empty:
        raise ValueError("no test images for the split's test classes")
    return rows.reset_index(drop=True), roots


def image_scores(predictions: dict[str, Any], params: dict[str, Any]) -> np.ndarray:
    """The image score of ``evaluate.score_source``: ``map_max`` (max of the anomaly map),
    ``p_yes`` (P(yes) of the detection question, :meth:`Predictor.p_yes`) or
    ``fused`` = w * p_yes + (1 - w) * map_max with w = ``fusion_weight``. Both parts lie in [0, 1]
    (a sigmoid map, a probability), so they are combined as they are, without rescaling."""
    cfg = parse_eval_params(params)
    map_max = predictions["map_max"] if "map_max" in predictions else predictions["scores"]
    map_max = np.asarray(map_max, dtype=np.float64)
    if cfg.score_source == "map_max":
        return map_max
    p_yes = predictions.get("p_yes")
    if p_yes is None:
        raise ValueError(
            f"evaluate.score_source {cfg.score_source!r} needs P(yes) in the predictions "
            "(predict_eval_set computes it)"
        )
    p_yes = np.asarray(p_yes, dtype=np.float64)
    if cfg.score_source == "p_yes":
        return p_yes
    return cfg.fusion_weight * p_yes + (1.0 - cfg.fusion_weight) * map_max


def predict_eval_set(
    trained: tuple, eval_set: pd.DataFrame, roots: dict[str, str], params: dict[str, Any]
) -> dict[str, Any]:
    """Anomaly maps (at ``eval_size``) and map-max scores from the segmentation prompt; the
    answer to the detection question and P(yes) from its first token; ``scores`` is the image
    score of ``score_source``."""
    from vmad_pipeline.inference.predictor import Predictor
    from vmad_pipeline.training.data import ImageTable
    from vmad_pipeline.training.device import autocast, resolve_placement

    cfg = parse_eval_params(params)
    model, tokenizer = trained
    device, dtype = resolve_placement(cfg.device, cfg.precision)
    model.to(device, dtype)
    table = ImageTable.load(eval_set, roots, model.config.sam.image_size, progress=cfg.progress)
    categories = list(eval_set["category"])
    predictor = Predictor(model, tokenizer, max_new_tokens=cfg.max_new_tokens)
    with autocast(device, dtype):
        pred = predictor.predict(
            table.images,
            categories,
            output_size=cfg.eval_size,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
        )
        detection = predictor.detect(
            table.images,
            categories,
            max_new_tokens=cfg.answer_max_new_tokens,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
        )
    if not pred.seg_found.all():
        log.warning(
            "%d of %d answers had no [SEG]; the last token's state was used",
            int((~pred.seg_found).sum()),
            len(pred.seg_found),
        )
    out = {
        "maps": pred.maps,
        "map_max": pred.scores,
        "p_yes": detection.p_yes,
        "answers": pred.answers,
        "detection_answers": detection.texts,
        "seg_found": pred.seg_found,
    }
    out["scores"] = image_scores(out, params)
    return out


def load_ground_truth(
    eval_set: pd.DataFrame, roots: dict[str, str], params: dict[str, Any]
) -> list[np.ndarray]:
    """The test masks at the evaluation size (binary; zeros for normal images), read once."""
    from vmad_pipeline.datasets.manifest import mask_file
    from vmad_pipeline.training.data import load_mask

    size = parse_eval_params(params).eval_size
    return [load_mask(mask_file(roots, r.source, r.mask_path), size) for r in eval_set.itertuples()]


def grade_answers(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    taxonomy: dict[str, Any] | None,
    params: dict[str, Any],
) -> pd.DataFrame:
    """One row per test image: the detection question and answer, what was parsed from it and
    whether each part is right (rules in ``metrics/text.py``). ``type_correct`` and
    ``location_correct`` are only set on anomalous images (with a taxonomy type / a mask);
    ``type_correct`` is unset everywhere without a taxonomy."""
    from vmad_pipeline.annotation.geometry import mask_geometry
    from vmad_pipeline.annotation.taxonomy import Taxonomy
    from vmad_pipeline.metrics.text import parse_defect_type, parse_location, parse_yes_no
    from vmad_pipeline.training import prompts

    n = len(eval_set)
    answers = list(predictions.get("detection_answers") or [""] * n)
    if len(answers) != n or len(masks) != n:
        raise ValueError(
            f"{n} test images but {len(answers)} detection answers and {len(masks)} masks"
        )
    tax = Taxonomy.from_dict(taxonomy) if taxonomy else None
    p_yes = predictions.get("p_yes")
    scores = image_scores(predictions, params)
    rows = []
    for i, r in enumerate(eval_set.itertuples()):
        answer = answers[i]
        said = parse_yes_no(answer)
        anomalous = bool(r.label)
        gt_location = (mask_geometry(masks[i])["location"] or None) if anomalous else None
        location = parse_location(answer)
        named = parse_defect_type(answer, tax) if tax else None
        defect_id = getattr(r, "defect_id", -1)
        gt_id = -1 if defect_id is None or pd.isna(defect_id) else int(defect_id)
        rows.append(
            {
                "source": r.source,
                "image_path": r.image_path,
                "category": r.category,
                "label": int(r.label),
                "defect_type": (getattr(r, "defect_type", "") or "") if anomalous else "",
                "question": prompts.VQA_QUESTION.format(object=prompts.object_name(r.category)),
                "answer": answer,
                "p_yes": None if p_yes is None else float(p_yes[i]),
                "score": float(scores[i]),
                "said_anomalous": said,
                "answer_parsed": said is not None,
                "answer_correct": said is not None and said == anomalous,
                "location": location,
                "gt_location": gt_location,
                "location_correct": (location == gt_location) if gt_location else None,
                "named_type": named.name if named else None,
                "type_correct": (named is not None and named.id == gt_id)
                if (tax is not None and anomalous and gt_id >= 0)
                else None,
            }
        )
    return pd.DataFrame(rows)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "aupro", "pro_200_thresholds")
TEXT_METRICS = (
    "answer_accuracy",
    "answer_balanced_accuracy",
    "defect_type_accuracy",
    "location_accuracy",
)
METRICS = IMAGE_METRICS + PIXEL_METRICS + TEXT_METRICS


def _mean_flag(flags: pd.Series) -> float:
    """Share of True among the set (non-null) flags; NaN when none is set."""
    known = flags.dropna()
    return float(known.astype(bool).mean()) if len(known) else float("nan")


def _class_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: list[np.ndarray],
    maps: list[np.ndarray],
    graded: pd.DataFrame,
    fpr_limit: float,
) -> dict[str, float]:
    """Every metric of one class; NaN where undefined (one label only, no anomalous pixel)."""
    from vmad_pipeline.metrics import (
        answer_accuracy,
        aupro,
        balanced_answer_accuracy,
        image_ap,
        image_auroc,
        image_f1_max,
        pixel_ap,
        pixel_auroc,
        pro_200_thresholds,
    )

    nan = float("nan")
    both = 0 < labels.sum() < len(labels)
    has_pixels = any(m.any() for m in masks)
    parsed = [None if pd.isna(v) else bool(v) for v in graded["said_anomalous"]]
    return {
        "image_auroc": image_auroc(labels, scores) if both else nan,
        "image_ap": image_ap(labels, scores) if both else nan,
        "image_f1_max": image_f1_max(labels, scores) if both else nan,
        "pixel_auroc": pixel_auroc(masks, maps) if has_pixels else nan,
        "pixel_ap": pixel_ap(masks, maps) if has_pixels else nan,
        "aupro": aupro(masks, maps, fpr_limit=fpr_limit) if has_pixels else nan,
        "pro_200_thresholds": pro_200_thresholds(masks, maps, fpr_limit=fpr_limit)
        if has_pixels
        else nan,
        "answer_accuracy": answer_accuracy(labels, parsed),
        "answer_balanced_accuracy": balanced_answer_accuracy(labels, parsed),
        "defect_type_accuracy": _mean_flag(graded["type_correct"]),
        "location_accuracy": _mean_flag(graded["location_correct"]),
    }


def compute_metrics(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    params: dict[str, Any],
    taxonomy: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, float], pd.DataFrame]:
    """Every metric of ``metrics.md`` per class and as the unweighted mean over classes.

    Image AUROC / AP / F1-max on the score of ``score_source``; pixel AUROC / AP, exact AUPRO and,
    separately labelled, the 200-threshold PRO on the maps at ``eval_size``; answer accuracy and
    balanced accuracy, location accuracy and (with ``taxonomy``) defect-type accuracy on the
    detection answers. Returns (report for metrics.json, flat dict for MLflow, per-class table).
    """
    cfg = parse_eval_params(params)
    labels = eval_set["label"].to_numpy().astype(np.int64)
    scores = image_scores(predictions, params)
    graded = grade_answers(eval_set, predictions, masks, taxonomy, params)
    rows = []
    for cls, idx in eval_set.groupby("category").indices.items():
        values = _class_metrics(
            labels[idx],
            scores[idx],
            [masks[i] for i in idx],
            [predictions["maps"][i] for i in idx],
            graded.iloc[idx],
            cfg.fpr_limit,
        )
        rows.append(
            {
                "category": cls,
                "n_images": len(idx),
                "n_anomalous": int(labels[idx].sum()),
                **values,
                "unparsed_answers": int((~graded["answer_parsed"].iloc[idx]).sum()),
                "seg_found_rate": float(np.mean(predictions["seg_found"][idx])),
            }
        )
    table = pd.DataFrame(rows)
    means = {
        k: float(table[k].mean(skipna=True)) if table[k].notna().any() else math.nan
        for k in METRICS
    }
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
        "counts": {
            "n_images": len(eval_set),
            "n_anomalous": int(labels.sum()),
            "n_classes": len(rows),
            "unparsed_answers": int((~graded["answer_parsed"]).sum()),
        },
        "settings": {
            "eval_size": cfg.eval_size,
            "score_source": cfg.score_source,
            "fusion_weight": cfg.fusion_weight if cfg.score_source == "fused" else None,
            "aupro_fpr_limit": cfg.fpr_limit,
            "aupro": "exact (MVTec AD 2021)",
            "pro_200_thresholds": "paper-style approximation (200 thresholds, FPR rescaled); "
            "not AUPRO",
            "mean": "unweighted mean over classes (classes where a metric is undefined skipped)",
            "answer_max_new_tokens": cfg.answer_max_new_tokens,
            "n_images": len(eval_set),
        },
    }
    flat = {k: v for k, v in means.items() if not math.isnan(v)}
    for r in rows:
        for k in METRICS:
            if not math.isnan(r[k]):
                flat[f"{r['category']}/{k}"] = r[k]
    log.info(
        "unseen classes (%s score): image AUROC %.3f, pixel AUROC %.3f, AUPRO %.3f, "
        "answer accuracy %.3f",
        cfg.score_source,
        means["image_auroc"],
        means["pixel_auroc"],
        means["aupro"],
        means["answer_accuracy"],
    )
    return report, flat, table
