"""Train: thin adapters over ``training.fit`` (the tokenizer, the LoRA training of VMAD) and the
MLflow pyfunc to register."""

from __future__ import annotations

from typing import Any

import pandas as pd

from vmad_pipeline.configs import parse_train_params
from vmad_pipeline.splitting import split_rows, training_record


def fit_tokenizer(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    riad_qa: pd.DataFrame,
    params: dict[str, Any],
    weights: dict[str, Any],
):
    """The tokenizer of the training conversations (tiny) or of the checkpoint (real preset)."""
    from vmad_pipeline.training.fit import fit_tokenizer as fit

    cfg, model_cfg = parse_train_params(params, weights)
    return fit(split_rows(manifest, splits)[0], riad_qa, cfg, model_cfg)


def train_expert(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    riad_qa: pd.DataFrame,
    tokenizer,
    params: dict[str, Any],
    weights: dict[str, Any],
) -> dict[str, Any]:
    """Stage 1 of Anomaly-OV's recipe: the anomaly expert alone on the training classes' masks
    and labels (reused when its inputs did not change); {} when the model has no expert."""
    from vmad_pipeline.training.fit import fit_expert

    cfg, model_cfg = parse_train_params(params, weights)
    return fit_expert(split_rows(manifest, splits)[0], roots, riad_qa, tokenizer, cfg, model_cfg)


def train_generator(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    params: dict[str, Any],
    weights: dict[str, Any],
    generate: dict[str, Any],
) -> dict[str, Any]:
    """The defect generator that ``train.synthesis`` (generated | both) paints training anomalies
    with, trained on the training classes' defects at SAM's input side (or read from its cache);
    {} and nothing trained under ``paste``."""
    cfg, model_cfg = parse_train_params(params, weights)
    return _generator(split_rows(manifest, splits)[0], roots, cfg, model_cfg, {}, generate)[0]


def train_model(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    riad_qa: pd.DataFrame,
    tokenizer,
    expert: dict[str, Any],
    generator: dict[str, Any],
    params: dict[str, Any],
    weights: dict[str, Any],
    evaluate: dict[str, Any],
    generate: dict[str, Any],
) -> tuple[tuple, dict[str, list[float]], pd.DataFrame, dict[str, Any]]:
    """Build the preset (its anomaly expert, if any, from stage 1 ``expert`` and frozen; the
    defect generator ``generator`` painting ``train.synthesis``'s anomalies), train it
    with LoRA on every image of the training classes but the
    validation slice, and calibrate its decision thresholds on that slice (scoring by the
    ``evaluate`` rule, as everything downstream does).

    Returns (model, tokenizer), the per-step curves with the run's throughput and peak memory
    (for MLflow), the curves as a table (for DVC plots) and a summary.
    """
    from vmad_pipeline.configs.evaluate import parse_evaluate_params
    from vmad_pipeline.inference.calibrate import calibrate_model
    from vmad_pipeline.training.fit import fit_vmad

    cfg, model_cfg = parse_train_params(params, weights)
    rows = split_rows(manifest, splits)[0]
    record = training_record(rows, splits)
    stage, painter = _generator(rows, roots, cfg, model_cfg, generator, generate)
    trained = fit_vmad(
        rows,
        roots,
        riad_qa,
        tokenizer,
        cfg,
        model_cfg,
        trained_on=record,
        expert=expert or None,
        painter=painter,
    )
    if trained is None:  # a rank other than 0 of a run over several machines (worker.py)
        return None
    rule = parse_evaluate_params(evaluate)
    calibrate_model(trained.model, tokenizer, trained.validation_rows, roots, cfg.calibration, rule)
    outputs = training_outputs(trained, splits, cfg.steps)
    if stage:
        outputs[3]["generator"] = {k: stage.get(k) for k in ("key", "reused", "seconds", "types")}
    return outputs


def _generator(rows, roots, cfg, model_cfg, generator, generate):
    """(stage, painter) of the defect generator ``train.synthesis`` paints with: the
    train_generator node's, or (``{}`` from the multi-node worker) its cache, which every rank of
    a launched run reads; ({}, None) under ``paste``."""
    from vmad_pipeline.configs.generate import parse_generate_params
    from vmad_pipeline.synthesis.run import training_generator
    from vmad_pipeline.training.launch import distributed_env

    gen_cfg = parse_generate_params(generate).generator
    side = model_cfg.sam.image_size
    return training_generator(
        rows, roots, cfg.synthesis, gen_cfg, side, generator, cached_only=distributed_env()
    )


def training_outputs(trained, splits: dict[str, Any], steps: int):
    """The train node's outputs from a ``training.fit.Trained`` (also written by the multi-node
    worker, ``pipelines/train/worker.py``)."""
    summary = {"train_classes": list(splits["train_classes"]), **trained.summary}
    summary["decision"] = trained.model.decision
    if trained.validation:
        summary["validation"] = trained.validation[-1]
    table = pd.DataFrame({"step": range(1, steps + 1), **trained.curves})
    cost = ("images_per_s", "peak_host_memory_mb", "peak_gpu_memory_mb", "skipped_images")
    tracked = {**trained.curves, **{k: summary[k] for k in cost if summary.get(k) is not None}}
    for key in ("image_threshold", "pixel_threshold"):
        tracked[f"decision_{key}"] = trained.model.decision.get(key)
    from vmad_pipeline.training.routers import router_metrics

    tracked.update(router_metrics(summary.get("router")))  # AMoE-LoRA's routing
    for key in ("loss", "pixel_auroc"):  # validation passes at their steps
        tracked[f"val_{key}"] = {v["step"] - 1: v[key] for v in trained.validation}
    return (trained.model, trained.tokenizer), tracked, table, summary


def package_model(checkpoint, evaluate: dict[str, Any]) -> dict[str, Any]:
    """What the registered pyfunc is logged with: its ``model_config`` (the evaluate parameters'
    score rule and decoding budget, so the registered model scores as it was evaluated) and
    ``metadata`` (what it was trained on). Reads the written checkpoint."""
    from vmad_pipeline.configs.evaluate import parse_evaluate_params
    from vmad_pipeline.inference.pyfunc import model_config

    return {
        "model_config": model_config(parse_evaluate_params(evaluate)),
        "metadata": {"trained_on": checkpoint.trained_on, "decision": checkpoint.decision},
    }
