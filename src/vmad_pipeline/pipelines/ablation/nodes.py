"""Ablation: thin adapters over ``vmad_pipeline.ablation`` (plan, run, report)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from vmad_pipeline.configs.ablation import parse_ablation_params


def plan_ablation(
    ablation: dict[str, Any],
    train: dict[str, Any],
    evaluate: dict[str, Any],
    weights: dict[str, Any],
    generate: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every (table, cell, seed), validated before anything trains."""
    from vmad_pipeline.ablation.plan import plan_ablation as plan

    return plan(parse_ablation_params(ablation), train, evaluate, weights, generate)


def run_ablation(
    plan: list[dict[str, Any]],
    store,
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    riad_qa: pd.DataFrame,
    taxonomy: dict[str, Any],
    tokenizer,
    weights: dict[str, Any],
    ablation: dict[str, Any],
) -> pd.DataFrame:
    """Every distinct cell trained and evaluated once per seed, finished cells reused."""
    from vmad_pipeline.ablation.run import run_ablation as run
    from vmad_pipeline.io.tracking import nested_run

    progress = parse_ablation_params(ablation).progress
    return run(
        plan,
        store,
        manifest,
        splits,
        roots,
        riad_qa,
        taxonomy,
        tokenizer,
        weights,
        progress,
        track=nested_run,  # one nested MLflow run per distinct cell
    )
