"""What a training run hands on, from a ``training.fit.Trained``: the curves and figures to
track (MLflow names: the per-step curves, the run's cost, the calibrated thresholds, AMoE-LoRA's
routing, the validation passes at their steps), the curves as a table (DVC plots) and the
summary. The train node and the multi-node worker both write these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from vmad_pipeline.training.fit import Trained
from vmad_pipeline.training.routers import router_metrics

COST = ("images_per_s", "peak_host_memory_mb", "peak_gpu_memory_mb", "skipped_images")


@dataclass
class RunOutputs:
    tracked: dict[str, Any]  # name -> a value, a curve, or {step: value}
    table: pd.DataFrame  # one row per step
    summary: dict[str, Any]


def run_outputs(
    trained: Trained, train_classes: list[str], steps: int, generator: dict | None = None
) -> RunOutputs:
    """The outputs of a calibrated ``trained`` model (``fit_vmad(..., evaluate=...)``) trained
    ``steps`` steps on ``train_classes``; ``generator``: the defect generator's stage record
    (``synthesis.run.training_generator``), summarised when given."""
    decision = trained.model.decision
    summary = {"train_classes": list(train_classes), **trained.summary, "decision": decision}
    if trained.validation:
        summary["validation"] = trained.validation[-1]
    if generator:
        summary["generator"] = {k: generator.get(k) for k in ("key", "reused", "seconds", "types")}
    table = pd.DataFrame({"step": range(1, steps + 1), **trained.curves})
    tracked = {**trained.curves, **{k: summary[k] for k in COST if summary.get(k) is not None}}
    for key in ("image_threshold", "pixel_threshold"):
        tracked[f"decision_{key}"] = decision.get(key)
    tracked.update(router_metrics(summary.get("router")))  # AMoE-LoRA's routing
    for key in ("loss", "pixel_auroc"):  # validation passes at their steps
        tracked[f"val_{key}"] = {v["step"] - 1: v[key] for v in trained.validation}
    return RunOutputs(tracked, table, summary)
