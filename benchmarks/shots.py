"""Benchmark: the nearest-normal-patch baseline with k normal references (evaluation/shots.py).

On the default split's unseen classes of a project in which `kedro run` has run (its manifest,
split and data; no model needed), for k = 1, 2, 4, 8 and three reference draws
(``evaluate.shot_seed`` 0, 1, 2): image / pixel AUROC and AUPRO of the baseline at the shipped
``evaluate.references`` settings, and the decision (FPR, recall) at every references-only
threshold rule, so the rule is chosen by measurement (issue 25). The same rules are also scored
on the training classes (their normal training images as references, their test images as the
test), which a rule may be chosen on without touching a test class.

    python benchmarks/shots.py --project /tmp/after

Writes benchmarks/results/shots.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from default_run import REPO, commit, machine

SEEDS = (0, 1, 2)
KS = (1, 2, 4, 8)
RULES = ("loo_max", "prediction@0.9", "prediction@0.95", "prediction@0.99")


def project_eval_set(project: Path, train_side: bool = False):
    """(evaluate settings, manifest, evaluated rows, their roots) of a project where `kedro run`
    ran: the split's unseen test images, or (``train_side``) the training classes' test
    images."""
    from vmad_pipeline.configs.evaluate import parse_evaluate_params
    from vmad_pipeline.evaluation.eval_set import select_eval_set

    params = yaml.safe_load((REPO / "conf/base/parameters_evaluate.yml").read_text())
    cfg = parse_evaluate_params(params["evaluate"])
    data = project / "data"
    manifest = pd.read_parquet(data / "02_intermediate/manifest.parquet")
    splits = json.loads((data / "05_model_input/splits.json").read_text())
    roots = json.loads((data / "02_intermediate/dataset_roots.json").read_text())
    if train_side:
        rows = manifest[manifest["category"].isin(splits["train_classes"])]
        return cfg, manifest, rows[rows["split"] == "test"].reset_index(drop=True), roots
    eval_set, roots = select_eval_set(manifest, splits, roots, {}, cfg)
    return cfg, manifest, eval_set, roots


def scores_by_class(project: Path, train_side: bool) -> list[dict]:
    """Per (seed, k, class): the references' leave-one-out scores, the normal and anomalous test
    scores, and the metrics of the unseen classes (train_side False)."""
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.evaluation.reference import reference_report
    from vmad_pipeline.evaluation.scores import map_max
    from vmad_pipeline.evaluation.shots import (
        class_features,
        draw_references,
        reference_pool,
        shot_maps,
    )
    from vmad_pipeline.images import load_batch, load_mask
    from vmad_pipeline.models.efficientnet import FrozenEfficientNet, load_efficientnet_lite0

    cfg, manifest, eval_set, roots = project_eval_set(project, train_side)
    pool = reference_pool(manifest, eval_set)
    backbone = FrozenEfficientNet(load_efficientnet_lite0())
    size = cfg.references.image_size
    images, _ = load_batch(row_files(eval_set, roots)[0], None, size)
    test = class_features(images, list(eval_set["category"]), backbone, cfg.references)
    masks = [load_mask(m, cfg.eval_size) for m in row_files(eval_set, roots)[1]]
    labels = eval_set["label"].to_numpy()
    out = []
    for seed in SEEDS:
        for k in KS:
            drawn = draw_references(pool, k, seed)
            refs = {c: load_batch(row_files(r, roots)[0], None, size)[0] for c, r in drawn.items()}
            start = time.perf_counter()  # the comparison: the images' features are made once
            found = shot_maps(test, refs, backbone, cfg.references, cfg.eval_size)
            seconds = time.perf_counter() - start
            scores = map_max(found.maps)
            metrics = reference_report(eval_set, found.maps, masks, cfg.fpr_limit)[0]["mean"]
            for cls, loo in found.loo_scores.items():
                mask = (eval_set["category"] == cls).to_numpy()
                out.append(
                    {
                        "seed": seed,
                        "k": k,
                        "class": cls,
                        "loo": loo,
                        "normal": scores[mask & (labels == 0)].tolist(),
                        "anomalous": scores[mask & (labels == 1)].tolist(),
                        "metrics": metrics,
                        "seconds": seconds,
                    }
                )
    return out


def decision(rows: list[dict], k: int, rule: str) -> dict:
    from vmad_pipeline.evaluation.shots import references_threshold

    fp = tn = tp = fn = 0
    for r in rows:
        if r["k"] != k:
            continue
        at = references_threshold(np.array(r["loo"]), rule)
        if at is None:
            return {"fpr": None, "recall": None}
        fp += sum(x >= at for x in r["normal"])
        tn += sum(x < at for x in r["normal"])
        tp += sum(x >= at for x in r["anomalous"])
        fn += sum(x < at for x in r["anomalous"])
    return {"fpr": round(fp / (fp + tn), 3), "recall": round(tp / (tp + fn), 3)}


def table(unseen: list[dict], seen: list[dict]) -> list[str]:
    lines = [
        "| k | image AUROC | pixel AUROC | AUPRO | "
        + " | ".join(f"{r}: FPR / recall" for r in RULES)
        + " |",
        "| --- " * (4 + len(RULES)) + "|",
    ]
    for k in KS:
        runs = {r["seed"]: r["metrics"] for r in unseen if r["k"] == k}
        cells = []
        for name in ("image_auroc", "pixel_auroc", "aupro"):
            v = np.array([m[name] for m in runs.values()])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}")
        for rule in RULES:
            d, t = decision(unseen, k, rule), decision(seen, k, rule)
            if d["fpr"] is None:
                cells.append("-")
            else:
                cells.append(f"{d['fpr']} / {d['recall']} (train {t['fpr']} / {t['recall']})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", required=True, help="a project where `kedro run` ran")
    args = parser.parse_args()
    project = Path(args.project).resolve()
    start = time.perf_counter()
    unseen = scores_by_class(project, train_side=False)
    seen = scores_by_class(project, train_side=True)
    result = {
        "machine": machine(),
        "commit": commit(),
        "seeds": list(SEEDS),
        "ks": list(KS),
        "unseen": unseen,
        "training_classes": seen,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out = REPO / "benchmarks/results"
    (out / "shots.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        "# Nearest-normal-patch baseline with k references (`python benchmarks/shots.py`)",
        "",
        f"Commit {result['commit']}, {result['machine']['cores']} CPU cores, torch "
        f"{result['machine']['torch']}; the default split's unseen classes (seed 0 split), "
        f"mean ± s.d. over reference draws {list(SEEDS)}; decisions pooled over classes and "
        "draws; in brackets the same rule on the training classes (their own references).",
        "",
        *table(unseen, seen),
        "",
    ]
    (out / "shots.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
