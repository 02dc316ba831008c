"""Benchmark: can one anomalous image among k references be told apart, and what does it cost?

For every unseen class of a project where `kedro run` has run, `--trials` seeded draws of k
normal references come from its normal training images; each draw is scored leave-one-out
(`inference.references.reference_set`: each reference inspected by the model against the
others) as it is (all normal) and with one anomalous test image of the class added as a
(k + 1)-th reference. Reported: every reference's leave-one-out score over the model's own
calibrated threshold (the ratio `inference.references.outliers` judges), for normal and for
anomalous references, and how often the rule flags each.

    python benchmarks/references_outlier.py --project /tmp/default

Writes benchmarks/results/references_outlier.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from default_run import REPO, commit, machine
from references_far import spread, trained_project

from vmad_pipeline.datasets.manifest import row_files
from vmad_pipeline.evaluation.shots import draw_references, reference_pool
from vmad_pipeline.images import load_batch
from vmad_pipeline.inference.references import outliers, reference_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    manifest, splits, roots, detector = trained_project(args.project)
    p, floor = detector.predictor, detector.thresholds["image_threshold"]
    tests = manifest[(manifest.split == "test") & manifest.category.isin(splits["test_classes"])]
    pool = reference_pool(manifest, tests)
    normal, anomalous = [], []  # each reference's loo score / floor
    flags = {
        "normal_sets": 0,
        "normal_sets_flagged": 0,
        "outlier_sets": 0,
        "outlier_found": 0,
        "outlier_sets_other_flagged": 0,
    }
    sets = []  # every draw's scores, to judge other rules from
    started = time.perf_counter()
    for trial in range(args.trials):
        drawn = draw_references(pool, args.k, trial)
        for cls, rows in drawn.items():
            refs = load_batch(row_files(rows, roots)[0], None, p.image_size)[0]
            clean = reference_set(p, refs, cls, rule="loo_max")
            normal += [s / floor for s in clean.loo_scores]
            flags["normal_sets"] += 1
            flags["normal_sets_flagged"] += bool(outliers(clean.loo_scores, floor))
            bad = tests[(tests.category == cls) & (tests.label == 1)].reset_index(drop=True)
            row = bad.iloc[[trial % len(bad)]]
            extra = load_batch(row_files(row, roots)[0], None, p.image_size)[0]
            mixed = reference_set(p, torch.cat([refs, extra]), cls, rule="loo_max")
            normal += [s / floor for s in mixed.loo_scores[:-1]]
            anomalous.append(mixed.loo_scores[-1] / floor)
            found = outliers(mixed.loo_scores, floor)
            flags["outlier_sets"] += 1
            flags["outlier_found"] += len(mixed.loo_scores) - 1 in found
            flags["outlier_sets_other_flagged"] += any(i < len(mixed.loo_scores) - 1 for i in found)
            sets.append(
                {
                    "class": cls,
                    "trial": trial,
                    "clean": clean.loo_scores,
                    "mixed": mixed.loo_scores,
                    "added": row.image_path.iloc[0],
                }
            )

    def cut(scores, drop=()):  # the references-only threshold (loo_max, never below the floor)
        return max(floor, max(x for i, x in enumerate(scores) if i not in drop))

    thresholds = {
        "normal_references": float(np.median([cut(x["clean"]) for x in sets])),
        "with_an_anomalous_one": float(np.median([cut(x["mixed"]) for x in sets])),
        "with_the_rule": float(
            np.median([cut(x["mixed"], outliers(x["mixed"], floor)) for x in sets])
        ),
    }
    result = {
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%F"),
        "command": f"python benchmarks/references_outlier.py --k {args.k} --trials {args.trials}",
        "k": args.k,
        "floor": floor,
        "seconds": round(time.perf_counter() - started, 1),
        "normal_reference_score_over_floor": spread(normal),
        "anomalous_reference_score_over_floor": spread(anomalous),
        "normal_share_above_floor": float((np.array(normal) > 1).mean()),
        "anomalous_share_above_floor": float((np.array(anomalous) > 1).mean()),
        **flags,
        "median_threshold": thresholds,
        "sets": sets,
    }
    (REPO / "benchmarks/results/references_outlier.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
