"""Predict: a thin adapter over ``inference.batch`` (which images, the run) with the model loaded
once and scoring by the evaluate parameters' rule, as the evaluation and the registered model."""

from __future__ import annotations

from typing import Any

from vmad_pipeline.configs import WeightsConfig, from_dict
from vmad_pipeline.configs.evaluate import parse_evaluate_params
from vmad_pipeline.configs.predict import parse_predict_params


def predict_images(
    checkpoint,
    store,
    taxonomy: dict[str, Any],
    params: dict[str, Any],
    evaluate: dict[str, Any],
    weights: dict[str, Any],
) -> dict[str, Any]:
    """Masks, maps, overlays and a JSON line for every image of ``predict.input`` not yet done;
    returns the counts and where they are."""
    from vmad_pipeline.annotation.taxonomy import Taxonomy
    from vmad_pipeline.inference.batch import list_inputs, predict_items
    from vmad_pipeline.inference.profiles import resolve_references
    from vmad_pipeline.inference.service import Detector

    cfg, rule = parse_predict_params(params), parse_evaluate_params(evaluate)
    items = list_inputs(cfg.input, cfg.category)  # before the model loads: a bad input is quick
    detector = Detector.from_checkpoint(
        checkpoint,
        from_dict(WeightsConfig, weights, "weights"),
        rule,
        device=cfg.device,
        precision=cfg.precision,
        image_threshold=cfg.image_threshold,
        pixel_threshold=cfg.pixel_threshold,
        taxonomy=Taxonomy.from_dict(taxonomy),
    )
    references = resolve_references(
        detector,
        cfg.references,
        items,
        profiles=cfg.profiles,
        max_pixels=cfg.max_pixels,
        rule=rule.references.model_threshold,
        seed=rule.shot_seed,
    )
    counts = predict_items(
        detector, items, store, cfg.batch_size, cfg.progress, cfg.max_pixels, references
    )
    out = {**counts, **detector.thresholds, "predictions": str(store.lines), "input": cfg.input}
    if references is not None:
        out["references"] = references.label
        if references.threshold is not None:
            out |= {"image_threshold": references.threshold, "image_from": "references"}
    return out
