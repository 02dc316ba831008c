"""Ablation: plan the cells of Tables III and IV, train and evaluate each cell per seed (reusing
cells already computed with the same parameters and data), summarise with mean and spread."""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from vmad_pipeline.configs import ConfigError

log = logging.getLogger(__name__)

# Bump when a change in code makes earlier cells incomparable (their cache keys then differ).
CACHE_VERSION = 1
METRICS = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "aupro",
    "answer_accuracy",
    "answer_balanced_accuracy",
)
# A cell's sizes and timings, as stored, logged and tabled.
CELL_NUMBERS = (
    "visual_tokens",
    "params_trainable",
    "train_seconds",
    "train_images_per_s",
    "eval_images_per_s",
)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: mappings recursively, anything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_hash(manifest: pd.DataFrame, splits: Mapping[str, Any], riad_qa: pd.DataFrame) -> str:
    """Identity of everything a cell learns from and is tested on: the images (paths, contents,
    labels), the split and the training answers."""
    from vmad_pipeline.hooks import manifest_hash

    qa = pd.util.hash_pandas_object(riad_qa.astype(str), index=False).to_numpy()
    return _digest([manifest_hash(manifest), dict(splits), hashlib.sha256(qa).hexdigest()])


def cell_description(train_params: Mapping[str, Any]) -> dict[str, Any]:
    """What a cell is, from its resolved training parameters (validated): the MLflow tags and the
    table columns. One place for both."""
    from vmad_pipeline.pipelines.train.nodes import parse_train_params

    cfg, model = parse_train_params(dict(train_params))
    ltc = model.projector.ltc
    steps = ("local_context", "spatial_downsampler", "injection", "multi_level")
    return {
        "preset": model.preset,
        "projector": model.projector.name,
        "ltc": model.projector.name == "ltc" and all(getattr(ltc, s) for s in steps),
        "ltc_steps": ",".join(s for s in steps if getattr(ltc, s))
        if model.projector.name == "ltc"
        else "",
        "dssl": model.dssl.enabled,
        "seed": cfg.seed,
        "steps": cfg.steps,
    }


def plan_ablation(
    ablation: dict[str, Any],
    train: dict[str, Any],
    evaluate: dict[str, Any],
    weights: dict[str, Any],
) -> list[dict[str, Any]]:
    """One entry per (table, cell, seed) with its resolved parameters and cache key.

    Every cell's parameters are validated here, before anything trains. Entries of different
    tables with identical parameters share a key (trained once).
    """
    seeds = ablation.get("seeds") or []
    if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"ablation.seeds: a non-empty list of distinct integers, got {seeds!r}")
    tables = ablation.get("tables") or {}
    if not tables:
        raise ConfigError("ablation.tables: no table configured")
    base_train = deep_merge(train, ablation.get("train") or {})
    eval_params = deep_merge(evaluate, ablation.get("evaluate") or {})
    plan = []
    for table_id, table in tables.items():
        cells = (table or {}).get("cells") or {}
        if not cells:
            raise ConfigError(f"ablation.tables.{table_id}.cells: no cell configured")
        for cell_id, cell in cells.items():
            where = f"ablation.tables.{table_id}.cells.{cell_id}"
            unknown = set(cell or {}) - {"label", "overrides"}
            if unknown:
                raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; use label, overrides")
            for seed in seeds:
                cell_train = deep_merge(base_train, (cell or {}).get("overrides") or {})
                cell_train["seed"] = seed
                try:
                    description = cell_description(cell_train)
                except ConfigError as error:
                    raise ConfigError(f"{where}.overrides: {error}") from None
                key = _digest(
                    {
                        "train": cell_train,
                        "weights": weights,
                        "evaluate": eval_params,
                        "version": CACHE_VERSION,
                    }
                )
                plan.append(
                    {
                        "table": table_id,
                        "table_title": table.get("title", table_id),
                        "cell": cell_id,
                        "label": (cell or {}).get("label", cell_id),
                        "seed": seed,
                        "params_key": key,
                        "train": cell_train,
                        "evaluate": eval_params,
                        **{f"cell_{k}": v for k, v in description.items() if k != "seed"},
                    }
                )
    log.info(
        "ablation: %d table cells x %d seeds = %d entries, %d distinct trainings",
        len(plan) // len(seeds),
        len(seeds),
        len(plan),
        len({p["params_key"] for p in plan}),
    )
    return plan


def _train_and_evaluate(
    entry: dict[str, Any],
    data: dict[str, Any],
    tokenizer,
    weights: dict[str, Any],
) -> dict[str, Any]:
    """Train one cell, evaluate it on the unseen classes, return its record (JSON-able)."""
    from vmad_pipeline.pipelines.evaluate.nodes import compute_metrics, predict_eval_set
    from vmad_pipeline.pipelines.train.nodes import train_model

    trained, curves, _, summary = train_model(
        data["manifest"],
        data["splits"],
        data["roots"],
        data["riad_qa"],
        tokenizer,
        entry["train"],
        weights,
    )
    start = time.perf_counter()
    predictions = predict_eval_set(trained, data["eval_set"], data["eval_roots"], entry["evaluate"])
    predict_s = time.perf_counter() - start
    report, _, _ = compute_metrics(
        data["eval_set"], predictions, data["eval_masks"], entry["evaluate"], data["taxonomy"]
    )
    n_images = len(data["eval_set"])
    batch = entry["train"].get("batch_size", 8)
    record = {
        "metrics": {k: v for k, v in report["mean"].items() if v is not None},
        "per_class": report["per_class"],
        "visual_tokens": summary["visual_tokens"],
        "params_trainable": summary["params_trainable"],
        "params_total": summary["params_total"],
        "train_seconds": summary["train_seconds"],
        "train_images_per_s": round(summary["steps"] * batch / summary["train_seconds"], 2),
        "final_loss": round(float(curves["loss"][-1]), 5),
        "eval_images": n_images,
        "eval_seconds": round(predict_s, 2),
        "eval_images_per_s": round(n_images / predict_s, 2),
    }
    del trained, predictions
    gc.collect()
    return record


def _log_cell(entry: dict[str, Any], record: dict[str, Any], tags: dict[str, str]) -> None:
    """One nested MLflow run per distinct cell: the tags to filter on, the cell's key parameters,
    its metrics and timings."""
    import mlflow

    from vmad_pipeline.hooks import model_tags

    name = f"{entry['table']}/{entry['cell']}/seed{entry['seed']}"
    with mlflow.start_run(run_name=name, nested=mlflow.active_run() is not None):
        mlflow.set_tags({**model_tags(entry["train"]), **tags})
        mlflow.log_params(
            {
                "projector": entry["cell_projector"],
                "ltc_steps": entry["cell_ltc_steps"] or "-",
                "dssl": entry["cell_dssl"],
                "seed": entry["seed"],
                "steps": entry["cell_steps"],
                "params_key": entry["params_key"],
            }
        )
        numbers = {
            **{f"test/{k}": v for k, v in record["metrics"].items()},
            **{k: record[k] for k in (*CELL_NUMBERS, "final_loss")},
        }
        mlflow.log_metrics({k: float(v) for k, v in numbers.items()})


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
    """Train and evaluate every distinct cell not already in ``store``; one row per plan entry.

    ``store`` (a :class:`~vmad_pipeline.io.datasets.AblationCellStore` from the catalog) keeps
    each finished cell at once, so an interrupted ablation resumes where it stopped and a rerun
    with the same parameters and data trains nothing. Cache keys include the data hash.
    """
    from vmad_pipeline.hooks import manifest_hash
    from vmad_pipeline.pipelines.evaluate.nodes import load_ground_truth, select_eval_set

    dhash = data_hash(manifest, splits, riad_qa)
    eval_params = plan[0]["evaluate"]
    eval_set, eval_roots = select_eval_set(manifest, splits, roots, taxonomy, eval_params)
    data = {
        "manifest": manifest,
        "splits": splits,
        "roots": roots,
        "riad_qa": riad_qa,
        "taxonomy": taxonomy,
        "eval_set": eval_set,
        "eval_roots": eval_roots,
        "eval_masks": load_ground_truth(eval_set, eval_roots, eval_params),
    }
    distinct: dict[str, dict[str, Any]] = {}
    for entry in plan:
        distinct.setdefault(entry["params_key"], entry)
    records: dict[str, dict[str, Any]] = {}
    trained_now = 0
    bar = tqdm(distinct.items(), desc="ablation cells", disable=not ablation.get("progress", True))
    for params_key, entry in bar:
        key = f"{params_key}-{dhash}"
        bar.set_postfix_str(f"{entry['table']}/{entry['cell']} seed {entry['seed']}")
        record = store.get(key)
        reused = record is not None
        if not reused:
            log.info(
                "ablation: training %s/%s seed %d", entry["table"], entry["cell"], entry["seed"]
            )
            record = _train_and_evaluate(entry, data, tokenizer, weights)
            record["key"] = key
            store.put(key, record)
            trained_now += 1
        records[params_key] = record
        users = [p for p in plan if p["params_key"] == params_key]
        _log_cell(
            entry,
            record,
            {
                "ablation_cells": ",".join(sorted({f"{p['table']}/{p['cell']}" for p in users})),
                "reused": str(reused).lower(),
                "dataset_hash": manifest_hash(manifest),
                "ablation_key": key,
            },
        )
    log.info(
        "ablation: %d distinct cells, %d trained now, %d reused",
        len(distinct),
        trained_now,
        len(distinct) - trained_now,
    )
    rows = []
    for entry in plan:
        record = records[entry["params_key"]]
        rows.append(
            {
                **{k: v for k, v in entry.items() if k not in ("train", "evaluate")},
                **{m: record["metrics"].get(m) for m in METRICS},
                **{k: record[k] for k in CELL_NUMBERS},
            }
        )
    return pd.DataFrame(rows)
