"""Benchmark: VMAD (LTC + DSSL) against the LISA-style baseline on the embedded default.

In a fresh clone of the current commit, builds the data once (ingest, annotate, split), then
for each variant and seed trains (`kedro run --pipeline train --tags train`) and evaluates
(`kedro run --pipeline evaluate --tags evaluate`) on the unseen test classes, reading
data/08_reporting/metrics.json after each. Variants differ only by parameters:

- baseline: ``avgpool`` projector (same 144-token budget as LTC at real size), DSSL off
- vmad:     the default parameters (``ltc`` projector, DSSL on)

    python benchmarks/vmad_vs_baseline.py                 # 2 variants x 3 seeds (~45 min, 2 cores)
    python benchmarks/vmad_vs_baseline.py --seeds 0 --variants vmad

Writes benchmarks/results/vmad_vs_baseline.json and prints a markdown table (mean and
population standard deviation over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_run import REPO, fresh_clone, machine, timed  # noqa: E402

VARIANTS = {
    "vmad": "",
    "baseline": "train.model.projector.name=avgpool,train.model.dssl.enabled=false",
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def run_cell(clone: Path, variant: str, seed: int) -> dict:
    params = ",".join(p for p in (f"train.seed={seed}", VARIANTS[variant]) if p)
    train_s = timed(
        ["kedro", "run", "--pipeline", "train", "--tags", "train", "--params", params], clone
    )
    eval_s = timed(["kedro", "run", "--pipeline", "evaluate", "--tags", "evaluate"], clone)
    metrics = json.loads((clone / "data/08_reporting/metrics.json").read_text())
    summary = json.loads((clone / "data/08_reporting/training_summary.json").read_text())
    return {
        "variant": variant,
        "seed": seed,
        **{m: metrics["mean"][m] for m in METRICS},
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
            for m in METRICS
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
    result = {
        "command": "python benchmarks/vmad_vs_baseline.py --seeds "
        + " ".join(map(str, args.seeds))
        + " --variants "
        + " ".join(args.variants),
        "machine": machine(),
        "variants": {v: VARIANTS[v] or "(defaults)" for v in args.variants},
        "cells": cells,
        "summary": summarise(cells),
        "total_s": round(time.perf_counter() - start, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| variant | " + " | ".join(METRICS) + " | train loop s |")
    print("|---" * (len(METRICS) + 2) + "|")
    for variant, s in result["summary"].items():
        cols = [f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}" for m in METRICS]
        print(f"| {variant} | " + " | ".join(cols) + f" | {s['train_loop_s_mean']} |")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
