"""Benchmark: the nearest-normal-patch baseline with and without flipped references.

The model reads each reference also flipped (``train.model.references.flips``); the baseline of
``evaluate.shots`` does not. So that the README compares like with like, this scores the baseline
at its shipped settings (``evaluate.references``) both ways on the unseen classes of a project in
which `kedro run` has run, for k = 1 and 4 and reference draws 0, 1, 2 (image AUROC, the mean of
the classes' AUROC, as the evaluation reports it).

    python benchmarks/shots_flips.py --project /tmp/refs2/full-0

Writes benchmarks/results/shots_flips.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from default_run import on_project
from shots import SEEDS, project_eval_set

KS = (1, 4)


def class_mean_auroc(labels, scores, categories) -> float:
    from sklearn.metrics import roc_auc_score

    return float(
        np.mean(
            [
                roc_auc_score(labels[categories == c], scores[categories == c])
                for c in sorted(set(categories))
            ]
        )
    )


def measure(project: Path) -> dict:
    import torch

    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.evaluation.scores import map_max
    from vmad_pipeline.evaluation.shots import (
        class_features,
        draw_references,
        reference_pool,
        shot_maps,
    )
    from vmad_pipeline.images import load_batch
    from vmad_pipeline.models.efficientnet import FrozenEfficientNet, load_efficientnet_lite0
    from vmad_pipeline.models.references import flipped

    cfg, manifest, eval_set, roots = project_eval_set(project)
    pool = reference_pool(manifest, eval_set)
    backbone = FrozenEfficientNet(load_efficientnet_lite0())
    size = cfg.references.image_size
    labels, cats = eval_set["label"].to_numpy(), eval_set["category"].to_numpy()
    images, _ = load_batch(row_files(eval_set, roots)[0], None, size)
    test = class_features(images, list(cats), backbone, cfg.references)
    out: dict = {}
    for name, view in (("as given", lambda r: r), ("with flips", flipped)):
        for k in KS:
            aurocs = []
            for seed in SEEDS:
                drawn = draw_references(pool, k, seed)
                refs = {
                    c: view(load_batch(row_files(r, roots)[0], None, size)[0])
                    for c, r in drawn.items()
                }
                with torch.no_grad():
                    found = shot_maps(test, refs, backbone, cfg.references, cfg.eval_size)
                aurocs.append(round(class_mean_auroc(labels, map_max(found.maps), cats), 4))
            out.setdefault(name, {})[str(k)] = {"per_draw": aurocs, "mean": float(np.mean(aurocs))}
            print(name, k, aurocs, flush=True)
    return out


if __name__ == "__main__":
    on_project(
        __doc__,
        "shots_flips",
        measure,
        "image_auroc",
        settings="evaluate.references as shipped; image AUROC = mean of the unseen classes'",
    )
