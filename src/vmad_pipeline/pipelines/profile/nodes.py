"""Profile: a thin adapter over ``inference.profiles``: which images, the model loaded once."""

from __future__ import annotations

from typing import Any

from vmad_pipeline.configs import WeightsConfig, from_dict
from vmad_pipeline.configs.evaluate import parse_evaluate_params
from vmad_pipeline.configs.profile import parse_profile_params


def build_profile(
    checkpoint, weights: dict[str, Any], params: dict[str, Any], evaluate: dict[str, Any]
) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """The profile (saved under its name), its summary (profile.json: the images' hashes, the
    threshold; an MLflow artifact) and its MLflow metrics (``profile/...``)."""
    from vmad_pipeline.inference.profiles import build_profile as build
    from vmad_pipeline.inference.profiles import read_references
    from vmad_pipeline.inference.service import Detector
    from vmad_pipeline.prompts import object_text

    cfg, rule = parse_profile_params(params), parse_evaluate_params(evaluate)
    object_text(cfg.category)  # the one rule for a user's object name
    files = read_references(cfg.images, cfg.max_pixels)  # before the model: bad input is quick
    detector = Detector.from_checkpoint(
        checkpoint, from_dict(WeightsConfig, weights, "weights"), rule, strict=False
    )
    images = [detector.tensor(image) for _, _, image in files]
    import torch

    profile = build(
        detector,
        cfg.name,
        cfg.category,
        torch.stack(images),
        [(name, data) for name, data, _ in files],
        rule=rule.references.model_threshold,
        seed=cfg.seed,
    )
    metrics = {
        "n_images": float(len(files)),
        "n_patches": float(len(profile.memory)),
        "n_left_out": float(len(profile.left_out)),
    }
    if profile.threshold is not None:
        metrics["threshold"] = profile.threshold
    return profile, profile.summary(), metrics
