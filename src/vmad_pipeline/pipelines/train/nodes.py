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


def _job(rows, splits, roots, riad_qa, tokenizer, params, weights):
    """The training job of the split's training classes' ``rows`` (``training.fit.TrainJob``)."""
    from vmad_pipeline.training.fit import make_job

    cfg, model_cfg = parse_train_params(params, weights)
    record = training_record(rows, splits)
    return make_job(rows, roots, riad_qa, tokenizer, cfg, model_cfg, trained_on=record)


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

    rows = split_rows(manifest, splits)[0]
    return fit_expert(_job(rows, splits, roots, riad_qa, tokenizer, params, weights))


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
) -> tuple[tuple, dict[str, Any], pd.DataFrame, dict[str, Any]] | None:
    """The calibrated model (``training.fit.fit_vmad``): the preset (its anomaly expert, if any,
    from stage 1 ``expert`` and frozen; the defect generator ``generator`` painting
    ``train.synthesis``'s anomalies) trained with LoRA on every image of the training classes
    but the validation slice, its decision thresholds calibrated on that slice, scoring by the
    ``evaluate`` rule as everything downstream does.

    Returns (model, tokenizer), the tracked curves and figures (for MLflow), the curves as a
    table (for DVC plots) and a summary; None on a rank other than 0 (worker.py)."""
    from vmad_pipeline.configs.evaluate import parse_evaluate_params
    from vmad_pipeline.training.fit import fit_vmad
    from vmad_pipeline.training.outputs import run_outputs

    rows = split_rows(manifest, splits)[0]
    job = _job(rows, splits, roots, riad_qa, tokenizer, params, weights)
    stage, painter = _generator(rows, roots, job.cfg, job.model_cfg, generator, generate)
    rule = parse_evaluate_params(evaluate)
    trained = fit_vmad(job, evaluate=rule, expert=expert or None, painter=painter)
    if trained is None:  # a rank other than 0 of a run over several machines (worker.py)
        return None
    out = run_outputs(trained, splits["train_classes"], job.cfg.steps, generator=stage)
    return (trained.model, trained.tokenizer), out.tracked, out.table, out.summary


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


def package_model(checkpoint, evaluate: dict[str, Any]) -> dict[str, Any]:
    """What the registered pyfunc is logged with: its ``model_config`` (the evaluate parameters'
    score rule and decoding budget, so the registered model scores as it was evaluated) and
    ``metadata`` (what it was trained on). Reads the written checkpoint."""
    from vmad_pipeline.configs.evaluate import parse_evaluate_params

    return {
        "model_config": parse_evaluate_params(evaluate).model_config(),
        "metadata": {"trained_on": checkpoint.trained_on, "decision": checkpoint.decision},
    }
