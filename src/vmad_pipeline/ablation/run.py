"""Running the ablation: train and evaluate each distinct cell per seed, reusing the cells a store
already holds for the same parameters and data, one nested tracking run per cell (the tracker is
injected: this layer imports no MLflow)."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vmad_pipeline.ablation.plan import data_hash
from vmad_pipeline.configs import parse_train_params
from vmad_pipeline.configs.evaluate import parse_evaluate_params
from vmad_pipeline.configs.generate import parse_generate_params
from vmad_pipeline.configs.train import run_tags
from vmad_pipeline.datasets.manifest import manifest_hash, row_files
from vmad_pipeline.evaluation.eval_set import select_eval_set
from vmad_pipeline.evaluation.grading import grade_answers
from vmad_pipeline.evaluation.report import MODULE_METRICS, compute_metrics
from vmad_pipeline.images import load_batch, load_mask
from vmad_pipeline.inference.chat import follow_up_answers
from vmad_pipeline.inference.service import Detector
from vmad_pipeline.placement import resolve_placement
from vmad_pipeline.splitting import split_rows
from vmad_pipeline.synthesis.run import training_generator
from vmad_pipeline.training.fit import fit_vmad, make_job

log = logging.getLogger(__name__)

HIERARCHY_SHOWN = (
    "follow_up_type_accuracy",
    "follow_up_location_accuracy",
    "level4_description_rouge_l",
    "level4_impact_rouge_l",
    "level4_suggestion_rouge_l",
    "level4_rouge_l",
)

METRICS = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "aupro",
    "answer_accuracy",
    "answer_balanced_accuracy",
    "p_yes_auroc",
    "defect_type_accuracy",
    "location_accuracy",
    "object_name_accuracy",
    *MODULE_METRICS,
    # the hierarchical text levels 2 to 4 (level 1 is answer_accuracy): the follow-ups' answers
    *HIERARCHY_SHOWN,
    # AMoE-LoRA: the anomaly-aware experts' summed mean gate over the training tokens of normal /
    # anomalous images (training.routers)
    "router_anomaly_gate_normal",
    "router_anomaly_gate_anomalous",
)
# A cell's sizes and timings, as stored, logged and tabled.
CELL_NUMBERS = (
    "visual_tokens",
    "params_trainable",
    "params_adapter",
    "train_seconds",
    "train_images_per_s",
    "eval_images_per_s",
)


class CellStore(Protocol):
    """Finished cells by key (``io.ablation.AblationCellStore`` is one)."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, record: dict[str, Any]) -> None: ...


class CellTracker(Protocol):
    """Records one cell as one tracking run, nested in the active one if any: its name, tags,
    parameters and metrics (``io.tracking.nested_run`` is one, for MLflow)."""

    def __call__(
        self, name: str, tags: dict[str, str], params: dict[str, Any], metrics: dict[str, float]
    ) -> None: ...


def _evaluate(trained, data: dict[str, Any], evaluate: dict[str, Any]) -> tuple[dict, float]:
    """The cell's report on the unseen classes, and the seconds its predictions took."""
    cfg = parse_evaluate_params(evaluate)
    device, dtype = resolve_placement(cfg.device, cfg.precision)
    detector = Detector.for_model(trained.model, trained.tokenizer, cfg, device=device, dtype=dtype)
    predictor = detector.predictor
    start = time.perf_counter()
    images, _ = load_batch(data["eval_images"], None, predictor.image_size)
    pred = predictor.predict(
        images,
        list(data["eval_set"]["category"]),
        output_size=cfg.eval_size,
        batch_size=cfg.batch_size,
    )
    seconds = time.perf_counter() - start
    follow_ups = (  # the hierarchical text levels (evaluate's follow-ups), untimed
        follow_up_answers(predictor, images, data["eval_set"], pred, cfg)
        if cfg.follow_ups
        else None
    )
    to_grade = pred.as_dict() | ({"follow_ups": follow_ups} if follow_ups else {})
    if cfg.region_settings and trained.model.region is not None:
        to_grade["region_settings"] = predictor.region_settings(
            images,
            list(data["eval_set"]["category"]),
            np.stack(data["eval_masks"]),
            batch_size=cfg.batch_size,
        )
    graded = grade_answers(
        data["eval_set"], to_grade, data["eval_masks"], data["taxonomy"], data["riad_qa"]
    )
    report, _, _ = compute_metrics(data["eval_set"], pred, data["eval_masks"], graded, cfg)
    return report, seconds


def train_and_evaluate(
    entry: dict[str, Any], data: dict[str, Any], tokenizer, weights: dict[str, Any]
) -> dict[str, Any]:
    """Train one cell, evaluate it on the unseen classes, return its record (JSON-able)."""
    cfg, model_cfg = parse_train_params(entry["train"], weights)
    generator = parse_generate_params(entry.get("generate") or {}).generator
    side = model_cfg.sam.image_size  # the generator is trained once, then read from its cache
    stage, painter = training_generator(
        data["train_rows"], data["roots"], cfg.synthesis, generator, side
    )
    job = make_job(data["train_rows"], data["roots"], data["riad_qa"], tokenizer, cfg, model_cfg)
    trained = fit_vmad(job, painter=painter)  # uncalibrated: a cell is scored by rankings
    summary = trained.summary
    report, predict_s = _evaluate(trained, data, entry["evaluate"])
    n_images = len(data["eval_set"])
    record = {
        "metrics": {k: v for k, v in report["mean"].items() if v is not None},
        "per_class": report["per_class"],
        "visual_tokens": summary["visual_tokens"],
        "params_trainable": summary["params_trainable"],
        "params_adapter": summary["params_adapter"],
        "params_total": summary["params_total"],
        "train_seconds": summary["train_seconds"],
        "train_images_per_s": summary["images_per_s"],  # None when resumed at its end
        "final_loss": round(float(trained.curves["loss"][-1]), 5),
        "eval_images": n_images,
        "eval_seconds": round(predict_s, 2),
        "eval_images_per_s": round(n_images / predict_s, 2),
    }
    router = summary.get("router")  # AMoE-LoRA: the anomaly experts' share by image state
    for state, row in (router or {}).get("image", {}).items():
        record["metrics"][f"router_anomaly_gate_{state}"] = row["anomaly_gate"]
    del trained
    gc.collect()
    return record


def _log_cell(
    entry: dict[str, Any], record: dict[str, Any], tags: dict[str, str], track: CellTracker
) -> None:
    """One nested tracking run per distinct cell: the tags to filter on, the cell's key
    parameters, its metrics and timings."""
    name = f"{entry['table']}/{entry['cell']}/seed{entry['seed']}"
    params = {
        "projector": entry["cell_projector"],
        "ltc_steps": entry["cell_ltc_steps"] or "-",
        "dssl": entry["cell_dssl"],
        "seed": entry["seed"],
        "steps": entry["cell_steps"],
        "params_key": entry["params_key"],
    }
    numbers = {
        **{f"test/{k}": v for k, v in record["metrics"].items()},
        **{k: record[k] for k in (*CELL_NUMBERS, "final_loss")},
    }
    metrics = {k: float(v) for k, v in numbers.items()}
    track(name, {**run_tags(entry["train"]), **tags}, params, metrics)


def _data(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    riad_qa: pd.DataFrame,
    taxonomy: dict[str, Any],
    evaluate: dict[str, Any],
) -> dict[str, Any]:
    """What every cell shares: training rows, the test images (files, masks) and the taxonomy."""
    cfg = parse_evaluate_params(evaluate)
    eval_set, eval_roots = select_eval_set(manifest, splits, roots, taxonomy, cfg)
    images, masks = row_files(eval_set, eval_roots)
    return {
        "train_rows": split_rows(manifest, splits)[0],
        "roots": roots,
        "riad_qa": riad_qa,
        "taxonomy": taxonomy,
        "eval_set": eval_set,
        "eval_images": images,
        "eval_masks": [load_mask(m, cfg.eval_size) for m in masks],
    }


def run_ablation(
    plan: list[dict[str, Any]],
    store: CellStore,
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    riad_qa: pd.DataFrame,
    taxonomy: dict[str, Any],
    tokenizer,
    weights: dict[str, Any],
    progress: bool = True,
    track: CellTracker | None = None,
) -> pd.DataFrame:
    """Train and evaluate every distinct cell not already in ``store``; one row per plan entry.

    ``store`` keeps each finished cell at once, so an interrupted ablation resumes where it
    stopped and a rerun with the same parameters and data trains nothing. Cache keys include the
    data hash. ``track`` records each distinct cell, trained or reused, as one nested run (the
    pipeline passes ``io.tracking.nested_run``); None records nothing.
    """
    dhash = data_hash(manifest, splits, riad_qa)
    data = _data(manifest, splits, roots, riad_qa, taxonomy, plan[0]["evaluate"])
    distinct: dict[str, dict[str, Any]] = {}
    for entry in plan:
        distinct.setdefault(entry["params_key"], entry)
    records: dict[str, dict[str, Any]] = {}
    trained_now = 0
    bar = tqdm(distinct.items(), desc="ablation cells", disable=not progress)
    for params_key, entry in bar:
        key = f"{params_key}-{dhash}"
        bar.set_postfix_str(f"{entry['table']}/{entry['cell']} seed {entry['seed']}")
        record = store.get(key)
        reused = record is not None
        if not reused:
            log.info(
                "ablation: training %s/%s seed %d", entry["table"], entry["cell"], entry["seed"]
            )
            record = train_and_evaluate(entry, data, tokenizer, weights)
            record["key"] = key
            store.put(key, record)
            trained_now += 1
        records[params_key] = record
        if track is not None:
            users = {f"{p['table']}/{p['cell']}" for p in plan if p["params_key"] == params_key}
            _log_cell(
                entry,
                record,
                {
                    "ablation_cells": ",".join(sorted(users)),
                    "reused": str(reused).lower(),
                    "dataset_hash": manifest_hash(manifest),
                    "ablation_key": key,
                },
                track,
            )
    log.info(
        "ablation: %d distinct cells, %d trained now, %d reused",
        len(distinct),
        trained_now,
        len(distinct) - trained_now,
    )
    return pd.DataFrame([_row(entry, records[entry["params_key"]]) for entry in plan])


def _row(entry: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: v for k, v in entry.items() if k not in ("train", "evaluate")},
        **{m: record["metrics"].get(m) for m in METRICS},
        **{k: record.get(k) for k in CELL_NUMBERS},  # cells stored before a number existed
    }
