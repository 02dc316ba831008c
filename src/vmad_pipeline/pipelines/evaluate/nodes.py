"""Evaluate: thin adapters over ``inference`` (the predictor) and ``evaluation`` (scores,
grading, metrics, curves, figures, MMAD). Each node parses ``params:evaluate`` once; the model
is loaded once per run (``load_detector``) and the scores and grades are computed once and
passed on."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline.configs import WeightsConfig, from_dict
from vmad_pipeline.configs.evaluate import parse_evaluate_params

log = logging.getLogger(__name__)


def select_eval_set(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    taxonomy: dict[str, Any],
    checkpoint,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The split's unseen classes, or every class of ``evaluate.dataset.root``; stops before
    anything is predicted when the model was trained on a test class of the split."""
    from vmad_pipeline.evaluation.eval_set import select_eval_set as select

    cfg = parse_evaluate_params(params)
    return select(manifest, splits, roots, taxonomy, cfg, checkpoint.trained_on)


def load_detector(
    checkpoint, weights: dict[str, Any], params: dict[str, Any], eval_set: pd.DataFrame
):
    """The trained detector (``inference.service.Detector``), loaded once, on the evaluation
    device and precision, scoring by ``score_rule``; after the eval set passed its checks
    (``eval_set`` orders it after them)."""
    from vmad_pipeline.inference.service import Detector

    weights_cfg = from_dict(WeightsConfig, weights, "weights")
    cfg = parse_evaluate_params(params)
    return Detector.from_checkpoint(checkpoint, weights_cfg, cfg, strict=False)


def predict_eval_set(
    detector, eval_set: pd.DataFrame, roots: dict[str, str], params: dict[str, Any]
) -> dict[str, Any]:
    """Anomaly maps (at ``eval_size``) and their maxima, the answer
    to the detection question and P(yes); ``scores``, the image scores of ``score_source``. The
    answers' Yes / No follow the decision at the model's calibrated threshold, as every entry
    point's do (``inference.service.Detector.inspect``)."""
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.images import load_batch
    from vmad_pipeline.inference.chat import follow_up_answers

    cfg, predictor = parse_evaluate_params(params), detector.predictor
    regions = cfg.region_settings and predictor.model.region is not None
    probe = predictor.type_head is not None  # the type head on the true masks, reported apart
    files, mask_files = row_files(eval_set, roots)
    images, truth = load_batch(
        files, mask_files if regions or probe else None, predictor.image_size, progress=cfg.progress
    )
    cut = detector.image_threshold if detector.thresholds else None  # the answers follow it
    pred = predictor.predict(
        images,
        list(eval_set["category"]),
        output_size=cfg.eval_size,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        thresholds=None if cut is None else [cut] * len(images),
    )
    if not pred.seg_found.all():
        log.warning(
            "%d of %d answers had no [SEG]; the last token's state was used",
            int((~pred.seg_found).sum()),
            len(pred.seg_found),
        )
    out = {**pred.as_dict(), "decision": _decision(detector)}
    if probe:
        out["type_probe"] = predictor.type_probe(images, (truth > 0).float())
    if cfg.follow_ups:
        out["follow_ups"] = follow_up_answers(predictor, images, eval_set, pred, cfg)
    if regions:  # the answers with no region and with the true one
        out["region_settings"] = predictor.region_settings(
            images,
            list(eval_set["category"]),
            truth,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
        )
    return out


def _decision(detector) -> dict | None:
    """The thresholds calibrated with the model, for the decision metrics; None (with a
    warning) when they belong to another score than this evaluation's."""
    if not detector.thresholds:
        log.warning(
            "no decision metrics: the model's thresholds were calibrated on score_source %r",
            detector.model.decision.get("score_source"),
        )
        return None
    return detector.thresholds | detector.model.decision


def load_ground_truth(
    eval_set: pd.DataFrame, roots: dict[str, str], params: dict[str, Any]
) -> list[np.ndarray]:
    """The test masks at the evaluation size (binary; zeros for normal images), read once."""
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.images import load_mask

    size = parse_evaluate_params(params).eval_size
    return [load_mask(m, size) for m in row_files(eval_set, roots)[1]]


def grade_answers(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    taxonomy: dict[str, Any],
    riad_qa: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The graded answers, twice: in memory for the metrics, and as the answers.csv report; the
    long follow-ups graded against the images' RIAD answers (``riad_qa``)."""
    from vmad_pipeline.evaluation.grading import grade_answers as grade

    graded = grade(eval_set, predictions, masks, taxonomy, riad_qa)
    return graded, graded


def compute_metrics(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    graded: pd.DataFrame,
    model_shots: dict[str, Any],
    params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, float], pd.DataFrame]:
    """metrics.json, the flat MLflow metrics and the per-class table; the decision metrics at
    the thresholds the predictions carry (``decision``), where they do; the model with
    references under ``shots`` (:func:`model_shot_metrics`)."""
    from vmad_pipeline.evaluation.predictions import Predictions
    from vmad_pipeline.evaluation.report import compute_metrics as compute

    report, flat, table = compute(
        eval_set,
        Predictions.from_dict(predictions),
        masks,
        graded,
        parse_evaluate_params(params),
        decision=predictions.get("decision"),
    )
    return {**report, "shots": model_shots}, flat, table


def model_shot_metrics(
    detector,
    eval_set: pd.DataFrame,
    roots: dict[str, str],
    masks: list[np.ndarray],
    manifest: pd.DataFrame,
    taxonomy: dict[str, Any],
    params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, float]]:
    """The model with k references of each test class and in batch mode
    (``inference.shot_evaluation``): metrics.json's ``shots`` section and its MLflow metrics
    (``shots/<k>/...``); a note for a model that reads no references."""
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.evaluation.shots import reference_pool
    from vmad_pipeline.images import load_batch
    from vmad_pipeline.inference.shot_evaluation import model_shot_report

    cfg, predictor = parse_evaluate_params(params), detector.predictor
    if predictor.model.cue is None:
        return {"note": "this model reads no references (train.model.references)"}, {}
    if not any(k > 0 for k in cfg.shots) and not cfg.batch_references:
        return {}, {}
    pool = reference_pool(_reference_rows(manifest, cfg), eval_set)
    size = predictor.image_size
    images, _ = load_batch(row_files(eval_set, roots)[0], None, size)

    def load(rows):
        return load_batch(row_files(rows, roots)[0], None, size)[0]

    return model_shot_report(detector, eval_set, images, masks, load, pool, cfg, taxonomy)


def _reference_rows(manifest: pd.DataFrame, cfg) -> pd.DataFrame:
    """Where references come from: the manifest, or ``evaluate.dataset.root``'s own tree."""
    if not cfg.dataset.root:
        return manifest
    from vmad_pipeline.datasets.mvtec import read_mvtec

    return read_mvtec(cfg.dataset.root, source=cfg.dataset.name, progress=cfg.progress)


def reference_metrics(
    eval_set: pd.DataFrame,
    roots: dict[str, str],
    masks: list[np.ndarray],
    params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, float]]:
    """The training-free, transductive reference beside the model (``evaluation/reference.py``):
    reference_metrics.json and its MLflow metrics (``reference/...``); off: a note only."""
    import dataclasses

    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.evaluation.reference import reference_maps, reference_report
    from vmad_pipeline.images import load_batch
    from vmad_pipeline.models.efficientnet import FrozenEfficientNet, load_efficientnet_lite0

    cfg = parse_evaluate_params(params)
    if not cfg.reference.enabled:
        return {"enabled": False}, {}
    images, _ = load_batch(row_files(eval_set, roots)[0], None, cfg.reference.image_size)
    backbone = FrozenEfficientNet(load_efficientnet_lite0())
    maps = reference_maps(
        images,
        list(eval_set["category"]),
        cfg.reference,
        cfg.eval_size,
        backbone,
        progress=cfg.progress,
    )
    report, flat = reference_report(eval_set, maps, masks, cfg.fpr_limit)
    mean = report["mean"]
    log.info(
        "training-free reference (transductive): image AUROC %s, pixel AUROC %s, AUPRO %s",
        *(mean[k] for k in ("image_auroc", "pixel_auroc", "aupro")),
    )
    settings = {**dataclasses.asdict(cfg.reference), "eval_size": cfg.eval_size}
    return {**report, "settings": settings, "n_images": len(eval_set)}, flat


def shot_metrics(
    eval_set: pd.DataFrame,
    roots: dict[str, str],
    masks: list[np.ndarray],
    manifest: pd.DataFrame,
    params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, float]]:
    """The nearest-normal-patch baseline with k normal references of each test class
    (``evaluation/shots.py``): shots_metrics.json and its MLflow metrics
    (``shots/baseline/<k>/...``); no k > 0 in ``evaluate.shots``: a note only. References come
    from the manifest's normal training images, or from ``evaluate.dataset.root``'s own
    ``train/good``."""
    import dataclasses

    from vmad_pipeline.evaluation.shots import PROTOCOL, reference_pool, shot_report
    from vmad_pipeline.models.efficientnet import FrozenEfficientNet, load_efficientnet_lite0

    cfg = parse_evaluate_params(params)
    if not any(k > 0 for k in cfg.shots):
        return {"enabled": False}, {}
    pool = reference_pool(_reference_rows(manifest, cfg), eval_set)
    backbone = FrozenEfficientNet(load_efficientnet_lite0())
    shots, flat = shot_report(
        eval_set,
        roots,
        masks,
        pool,
        cfg.shots,
        cfg.shot_seed,
        cfg.references,
        cfg.eval_size,
        cfg.fpr_limit,
        backbone,
    )
    settings = {
        **dataclasses.asdict(cfg.references),
        "shot_seed": cfg.shot_seed,
        "eval_size": cfg.eval_size,
    }
    report = {"protocol": PROTOCOL, "settings": settings, "n_images": len(eval_set)}
    return {**report, "shots": shots}, flat


def curve_data(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    params: dict[str, Any],
):
    """Per-class ROC, PR and PRO curve tables (DVC plots)."""
    from vmad_pipeline.evaluation.curves import curve_data as curves

    return curves(eval_set, predictions, masks, parse_evaluate_params(params))


def plot_shot_roc(eval_set: pd.DataFrame, predictions: dict[str, Any], metrics: dict[str, Any]):
    """The image ROC by reference mode (zero-shot, each k, batch)."""
    from vmad_pipeline.evaluation.figures import plot_shot_roc as plot

    return plot(eval_set["label"].to_numpy(), predictions["scores"], metrics)


def plot_overlays(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    roots: dict[str, str],
    params: dict[str, Any],
):
    """Best and worst cases per class, the map over the image."""
    from vmad_pipeline.evaluation.figures import plot_overlays as plot

    return plot(eval_set, predictions, masks, roots, parse_evaluate_params(params))


def evaluate_mmad(detector, params: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """MMAD accuracy per question type (an empty table and ``{"enabled": false}`` when off);
    questions about the model's training classes refused or reported apart."""
    from vmad_pipeline.evaluation.mmad import evaluate_mmad as evaluate

    cfg = parse_evaluate_params(params)
    return evaluate(detector.predictor, cfg, detector.model.trained_on)
