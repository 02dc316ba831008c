"""Train: thin adapters over ``training.fit`` (the tokenizer, the LoRA training of VMAD) and the
MLflow pyfunc to register."""

from __future__ import annotations

from typing import Any

import pandas as pd

from vmad_pipeline.configs import parse_train_params
from vmad_pipeline.splitting import split_rows


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


def train_model(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    riad_qa: pd.DataFrame,
    tokenizer,
    params: dict[str, Any],
    weights: dict[str, Any],
) -> tuple[tuple, dict[str, list[float]], pd.DataFrame, dict[str, Any]]:
    """Build the preset and train it with LoRA on every image of the training classes.

    Returns (model, tokenizer), the per-step curves (for MLflow and as a table for DVC plots)
    and a summary.
    """
    from vmad_pipeline.training.fit import fit_vmad

    cfg, model_cfg = parse_train_params(params, weights)
    trained = fit_vmad(split_rows(manifest, splits)[0], roots, riad_qa, tokenizer, cfg, model_cfg)
    summary = {"train_classes": list(splits["train_classes"]), **trained.summary}
    table = pd.DataFrame({"step": range(1, cfg.steps + 1), **trained.curves})
    return (trained.model, tokenizer), trained.curves, table, summary


def package_model(trained: tuple, evaluate: dict[str, Any]) -> dict[str, Any]:
    """The registered pyfunc's ``model_config``: the evaluate parameters' score rule and decoding
    budget, so the registered model scores as it was evaluated. Takes the checkpoint so that it
    registers only once the checkpoint is written."""
    from vmad_pipeline.configs.evaluate import parse_evaluate_params
    from vmad_pipeline.inference.pyfunc import model_config

    return model_config(parse_evaluate_params(evaluate))
