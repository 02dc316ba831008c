"""Generate: thin adapters over ``synthesis`` (docs/generation.md): train the defect generator
(cached by its inputs), paint an MVTec-layout tree of generated defects, score its fidelity and,
with a trained detector, the detector's AUROC on it."""

from __future__ import annotations

from typing import Any

import pandas as pd

from vmad_pipeline.configs.generate import parse_generate_params
from vmad_pipeline.splitting import split_rows


def _rows(manifest: pd.DataFrame, splits: dict[str, Any], classes: str) -> pd.DataFrame:
    """The training classes' rows, or the test classes' (``generate.classes``): the images
    painted on, and the real defects generated ones are compared with."""
    train, test = split_rows(manifest, splits)
    return train if classes == "train" else test


def train_generator(
    manifest: pd.DataFrame, splits: dict[str, Any], roots: dict[str, str], params: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The generator trained on the training classes' real defects (or read from its cache):
    the stage result and its loss curve (MLflow)."""
    from vmad_pipeline.synthesis.fit import generator_stage

    cfg = parse_generate_params(params)
    stage = generator_stage(split_rows(manifest, splits)[0], roots, cfg.generator)
    return stage, {"loss": stage["losses"], "seconds": stage["seconds"]}


def generate_anomalies(
    stage: dict[str, Any],
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    params: dict[str, Any],
):
    """Every training defect type painted ``per_type`` times on each class's normal images:
    the MVTec tree, its index and the overview figure."""
    from vmad_pipeline.synthesis.run import generate

    cfg = parse_generate_params(params)
    real = split_rows(manifest, splits)[0]
    return generate(stage, _rows(manifest, splits, cfg.classes), real, roots, cfg)


def generation_fidelity(
    root: str,
    index: pd.DataFrame,
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    params: dict[str, Any],
):
    """PSNR outside the mask and KID of the inside against real defects, per defect type."""
    from vmad_pipeline.synthesis.run import score_fidelity

    cfg = parse_generate_params(params)
    return score_fidelity(root, index, _rows(manifest, splits, cfg.classes), roots, cfg)


def generation_detector(
    checkpoint,
    root: str,
    index: pd.DataFrame,
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    weights: dict[str, Any],
    params: dict[str, Any],
    evaluate: dict[str, Any],
):
    """The trained detector's image AUROC on generated vs real defects (needs `kedro run
    --pipeline train` first), scored by the ``evaluate`` rule on its device."""
    from vmad_pipeline.configs.base import from_dict
    from vmad_pipeline.configs.evaluate import parse_evaluate_params
    from vmad_pipeline.configs.model import WeightsConfig
    from vmad_pipeline.inference.service import Detector
    from vmad_pipeline.synthesis.run import score_detector

    cfg, rule = parse_generate_params(params), parse_evaluate_params(evaluate)
    weights_cfg = from_dict(WeightsConfig, weights, "weights")
    predictor = Detector.from_checkpoint(checkpoint, weights_cfg, rule, strict=False).predictor
    real = _rows(manifest, splits, cfg.classes)
    return score_detector(predictor, root, index, real, roots, cfg)
