"""Benchmark: VMAD (LTC + DSSL) against the LISA-style baseline, and the small preset against tiny.

In a fresh clone of the current commit, builds the data once (ingest, annotate, split), then
for each variant and seed trains (`kedro run --pipeline train --tags train`) and evaluates
(`kedro run --pipeline evaluate --tags evaluate`) on the unseen test classes, reading
data/08_reporting/metrics.json after each. Variants differ only by parameters:

- vmad:     the default parameters (small preset, ``ltc`` projector, DSSL on)
- baseline: the same preset with the ``avgpool`` projector (same 144-token budget as LTC at
            real size) and DSSL off: LISA-style
- tiny:     conf/presets/tiny/ (every encoder trained from scratch), copied into conf/local/

    python benchmarks/vmad_vs_baseline.py                 # 3 variants x 3 seeds (~50 min, 2 cores)
    python benchmarks/vmad_vs_baseline.py --seeds 0 --variants vmad

Writes benchmarks/results/vmad_vs_baseline.{json,md} (mean and population standard deviation
over seeds, with the training-free reference of the same run beside them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_run import REPO, fresh_clone, machine, timed  # noqa: E402

from vmad_pipeline.evaluation.report import GROUNDING_METRICS, HEADLINE  # noqa: E402

VARIANTS = {
    "vmad": "",
    "baseline": "train.model.projector.name=avgpool,train.model.dssl.enabled=false",
    "tiny": "(conf/presets/tiny/ in conf/local/)",
    # without the multi-turn chat samples: the task mix before issue 14
    "no_chat": "train.task_mix.chat=0,train.task_mix.vqa=0.5",
}
# the headline metrics but the object's name (the default answers name none), and the
# follow-ups' accuracies (issue 14)
METRICS = (
    tuple(m for m in HEADLINE if m != "object_name_accuracy")
    + ("follow_up_location_accuracy", "follow_up_type_accuracy")
    + GROUNDING_METRICS  # the words against the model's own evidence (docs/words.md)
)
# with 4 normal references of each class (evaluate.shots): the words again
SHOT_METRICS = ("image_auroc", "defect_type_accuracy", "location_accuracy") + GROUNDING_METRICS[:4]
REFERENCE = ("image_auroc", "pixel_auroc", "aupro")


def use_preset(clone: Path, variant: str) -> None:
    """The tiny variant trains with conf/presets/tiny/ (in conf/local/); the others without."""
    local = clone / "conf" / "local" / "parameters_train.yml"
    local.unlink(missing_ok=True)
    if variant == "tiny":
        shutil.copy(clone / "conf" / "presets" / "tiny" / "parameters_train.yml", local)


def run_cell(clone: Path, variant: str, seed: int) -> dict:
    use_preset(clone, variant)
    overrides = "" if variant == "tiny" else VARIANTS[variant]
    params = ",".join(p for p in (f"train.seed={seed}", overrides) if p)
    train_s = timed(
        ["kedro", "run", "--pipeline", "train", "--tags", "train", "--params", params], clone
    )
    eval_s = timed(["kedro", "run", "--pipeline", "evaluate", "--tags", "evaluate"], clone)
    metrics = json.loads((clone / "data/08_reporting/metrics.json").read_text())
    summary = json.loads((clone / "data/08_reporting/training_summary.json").read_text())
    return {
        "variant": variant,
        "seed": seed,
        **{m: metrics["mean"].get(m) for m in METRICS},
        **{
            f"k4_{m}": metrics.get("shots", {}).get("4", {}).get("mean", {}).get(m)
            for m in SHOT_METRICS
        },
        "train_run_s": train_s,
        "train_loop_s": summary["train_seconds"],
        "evaluate_run_s": eval_s,
        "visual_tokens": summary["visual_tokens"],
        "params_trainable": summary["params_trainable"],
    }


def summarise(cells: list[dict]) -> dict:
    out = {}
    for variant in dict.fromkeys(c["variant"] for c in cells):
        rows = [c for c in cells if c["variant"] == variant]
        out[variant] = {
            m: {
                "mean": round(statistics.fmean(r[m] for r in rows), 4),
                "std": round(statistics.pstdev(r[m] for r in rows), 4),
            }
            for m in (*METRICS, *(f"k4_{x}" for x in SHOT_METRICS))
            if all(r.get(m) is not None for r in rows)
        }
        out[variant]["seeds"] = [r["seed"] for r in rows]
        out[variant]["train_loop_s_mean"] = round(
            statistics.fmean(r["train_loop_s"] for r in rows), 1
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/vmad_vs_baseline.json"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        clone = fresh_clone(Path(tmp), "repo")
        for stage in ("ingest", "annotate", "split"):
            timed(["kedro", "run", "--pipeline", stage, "--tags", stage], clone)
        cells = []
        for variant in args.variants:
            for seed in args.seeds:
                cells.append(run_cell(clone, variant, seed))
                print(json.dumps(cells[-1]), flush=True)
        reference = json.loads((clone / "data/08_reporting/reference_metrics.json").read_text())
    result = {
        "command": "python benchmarks/vmad_vs_baseline.py --seeds "
        + " ".join(map(str, args.seeds))
        + " --variants "
        + " ".join(args.variants),
        "machine": machine(),
        "variants": {v: VARIANTS[v] or "(defaults)" for v in args.variants},
        "cells": cells,
        "summary": summarise(cells),
        "reference": {m: reference["mean"][m] for m in REFERENCE},
        "reference_settings": reference.get("settings"),
        "total_s": round(time.perf_counter() - start, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table + f"written to {args.out}")


def markdown(result: dict) -> str:
    """Mean ± sd per variant; the transductive reference last (its own protocol)."""
    lines = ["| variant | " + " | ".join(METRICS) + " | train loop s |"]
    lines.append("|---" * (len(METRICS) + 2) + "|")
    for variant, s in result["summary"].items():
        cols = [f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}" if m in s else "n/a" for m in METRICS]
        lines.append(f"| {variant} | " + " | ".join(cols) + f" | {s['train_loop_s_mean']} |")
    ref = result["reference"]
    cols = [f"{ref[m]:.3f}" if m in ref else "n/a" for m in METRICS]
    lines.append("| training-free reference (transductive) | " + " | ".join(cols) + " | 0 |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
