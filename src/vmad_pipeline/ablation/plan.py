"""Planning the ablation: every (table, cell, seed) with its resolved parameters and cache key."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from vmad_pipeline.configs import ConfigError, describe_model, parse_train_params
from vmad_pipeline.configs.ablation import AblationConfig
from vmad_pipeline.datasets.manifest import manifest_hash

log = logging.getLogger(__name__)

# Bump when a change in code makes earlier cells incomparable (their cache keys then differ).
CACHE_VERSION = 1


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: mappings recursively, anything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_hash(manifest: pd.DataFrame, splits: Mapping[str, Any], riad_qa: pd.DataFrame) -> str:
    """Identity of everything a cell learns from and is tested on: the images (paths, contents,
    labels), the split and the training answers."""
    qa = pd.util.hash_pandas_object(riad_qa.astype(str), index=False).to_numpy()
    return digest([manifest_hash(manifest), dict(splits), hashlib.sha256(qa).hexdigest()])


def cell_description(train_params: Mapping[str, Any]) -> dict[str, Any]:
    """What a cell is, from its resolved training parameters (validated): the model's
    description (``configs.describe_model``, which the MLflow tags use too), seed, steps and where
    the synthetic anomalies come from."""
    cfg, model = parse_train_params(dict(train_params))
    return {
        **describe_model(model),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "synthesis": cfg.synthesis,
    }


def plan_ablation(
    cfg: AblationConfig,
    train: dict[str, Any],
    evaluate: dict[str, Any],
    weights: dict[str, Any],
    generate: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One entry per (table, cell, seed) with its resolved parameters and cache key.

    Every cell's parameters are validated here, before anything trains. Entries of different
    tables with identical parameters share a key (trained once). A cell trained with generated
    anomalies also carries (and is keyed by) the ``generate`` parameters its generator comes from.
    """
    base_train = deep_merge(train, cfg.train)
    eval_params = deep_merge(evaluate, cfg.evaluate)
    plan = []
    for table_id, table in cfg.tables.items():
        if table_id not in cfg.chosen():
            continue
        for cell_id, cell in table.cells.items():
            for seed in cfg.seeds:
                cell_train = deep_merge(base_train, cell.overrides)
                cell_train["seed"] = seed
                try:
                    description = cell_description(cell_train)
                except ConfigError as error:
                    where = f"ablation.tables.{table_id}.cells.{cell_id}.overrides"
                    raise ConfigError(f"{where}: {error}") from None
                painted = (
                    {} if description["synthesis"] == "paste" else {"generate": generate or {}}
                )
                key = digest(
                    {
                        "train": cell_train,
                        "weights": weights,
                        "evaluate": eval_params,
                        "version": CACHE_VERSION,
                        **painted,
                    }
                )
                plan.append(
                    {
                        "table": table_id,
                        "table_title": table.title or table_id,
                        "cell": cell_id,
                        "label": cell.label or cell_id,
                        "seed": seed,
                        "params_key": key,
                        "train": cell_train,
                        "evaluate": eval_params,
                        **painted,
                        **{f"cell_{k}": v for k, v in description.items() if k != "seed"},
                    }
                )
    log.info(
        "ablation: %d table cells x %d seeds = %d entries, %d distinct trainings",
        len(plan) // len(cfg.seeds),
        len(cfg.seeds),
        len(plan),
        len({p["params_key"] for p in plan}),
    )
    return plan
