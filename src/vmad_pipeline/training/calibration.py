"""Calibration, the use of the threshold rules (``evaluation.threshold_rules``): a trained model's
decision thresholds chosen on the held-out validation slice of the training classes (never a
test class), scored by the detector every entry point builds (``inference.service.Detector``),
and stored on the model (saved with it). Training ends here: ``training.fit.fit_vmad`` returns
a calibrated model."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.configs.train import CalibrationConfig
from vmad_pipeline.datasets.manifest import row_files
from vmad_pipeline.evaluation.scores import image_scores
from vmad_pipeline.evaluation.threshold_rules import decision_metrics, pixel_threshold, threshold
from vmad_pipeline.images import load_batch
from vmad_pipeline.inference.service import Detector

log = logging.getLogger(__name__)
UNCALIBRATED = {"image_threshold": 0.5, "pixel_threshold": 0.5, "calibrated": False}
DEGENERATE_PIXEL = 0.01


def calibrate(
    predictor, rows: pd.DataFrame | None, roots: dict[str, str], calibration: CalibrationConfig
) -> dict:
    """Image and pixel thresholds by ``calibration.image`` / ``.pixel`` on ``rows`` (the
    validation slice), with what they were chosen on and the decision metrics there. No rows:
    the uncalibrated 0.5 / 0.5, said in a warning."""
    if rows is None or not len(rows):
        log.warning(
            "no validation slice (train.validation.fraction is 0): decision thresholds stay at "
            "0.5; set train.validation to calibrate them"
        )
        return dict(UNCALIBRATED)
    size = predictor.image_size
    images, masks = load_batch(*row_files(rows, roots), size)
    pred = predictor.predict(images, list(rows["category"]), output_size=size)
    labels = rows["label"].to_numpy().astype(int)
    # chosen on the scores without the zero-shot factor (models.self_comparison.score_factors):
    # the factor then acts above the threshold, and the threshold stays one that scores with
    # references, which never carry it, can take as their floor (inference.references)
    at = threshold(
        calibration.image, labels, image_scores(pred.map_max, pred.p_yes, predictor.rule)
    )
    out = {
        "image_threshold": at,
        "pixel_threshold": pixel_threshold(calibration.pixel, pred.maps, masks.numpy()),
        "calibrated": True,
        "image_rule": calibration.image,
        "pixel_rule": calibration.pixel,
        "score_source": predictor.rule.source,
        "n_normal": int((labels == 0).sum()),
        "n_anomalous": int((labels == 1).sum()),
        "at_threshold": decision_metrics(labels, pred.scores, at),
    }
    warn_if_degenerate(out["pixel_threshold"], calibration.pixel)
    log.info(
        "decision thresholds on %d validation images: image %.4f (%s), pixel %.4f (%s)",
        len(rows),
        out["image_threshold"],
        calibration.image,
        out["pixel_threshold"],
        calibration.pixel,
    )
    return out


def warn_if_degenerate(pixel: float, rule: str) -> None:
    """A pixel threshold so low that almost any map value passes: masks of unseen classes would
    cover most of the image."""
    if pixel < DEGENERATE_PIXEL:
        log.warning(
            "pixel threshold %.3g (%s) is below %s: the validation maps are ~0 on normal pixels, "
            "so masks of new images would cover the whole image; set train.calibration.pixel to "
            "fixed@0.5, or f1 with anomalous validation images (train.validation.anomalous)",
            pixel,
            rule,
            DEGENERATE_PIXEL,
        )


def calibrate_model(
    model,
    tokenizer,
    rows: pd.DataFrame | None,
    roots: dict[str, str],
    calibration: CalibrationConfig,
    evaluate: EvaluateConfig,
) -> dict:
    """:func:`calibrate` with the detector every entry point builds for ``model`` (scoring by
    ``evaluate``'s rule and decoding budget); the thresholds are set on the model (saved with
    it) and returned."""
    model.decision = {}  # a fresh calibration: whatever was stored before is not read
    detector = Detector.for_model(model, tokenizer, evaluate)
    model.decision = as_json(calibrate(detector.predictor, rows, roots, calibration))
    return model.decision


def as_json(decision: dict) -> dict:
    """NaN-free for JSON files and MLflow."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, float) and not np.isfinite(v):
            return None
        return v

    return clean(decision)
