"""Benchmark: does the trained model add anything to the nearest-normal-patch baseline when the
two are only fused after the fact (the "map fusion only" row of issue 25)?

On a project in which `kedro run` trained the default model: its maps and image scores on the
unseen classes (k = 0), the baseline's at k = 1, 2, 4, 8 (reference draws 0, 1, 2), and their
weighted sums. The baseline's score is divided by a per-class scale, the mean of its
references' leave-one-out scores (k >= 2), so both parts read "about 1 = as far from normal as
the references are from each other":
score = w x model score + (1 - w) x min(baseline / (2 x scale), 1.5), and the same for the maps.

    python benchmarks/shots_fusion.py --project /tmp/after

Writes benchmarks/results/shots_fusion.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from default_run import REPO, commit, machine
from shots import SEEDS, project_eval_set

KS = (2, 4, 8)
WEIGHTS = (0.0, 0.25, 0.5, 0.75)


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from vmad_pipeline.configs import WeightsConfig
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
    from vmad_pipeline.inference.service import Detector
    from vmad_pipeline.models.checkpoint import Checkpoint
    from vmad_pipeline.models.efficientnet import FrozenEfficientNet, load_efficientnet_lite0

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", required=True, help="a project with the trained default")
    project = Path(parser.parse_args().project).resolve()
    data = project / "data"
    cfg, manifest, eval_set, roots = project_eval_set(project)
    files, mask_files = row_files(eval_set, roots)
    masks = [load_mask(m, cfg.eval_size) for m in mask_files]
    detector = Detector.from_checkpoint(Checkpoint(data / "06_models/vmad"), WeightsConfig(), cfg)
    images, _ = load_batch(files, None, detector.image_size)
    cats = list(eval_set["category"])
    pred = detector.predictor.predict(images, cats, output_size=cfg.eval_size)
    labels, classes = eval_set["label"].to_numpy(), np.array(cats)

    def image_auroc(scores):
        return float(
            np.mean([roc_auc_score(labels[classes == c], scores[classes == c]) for c in set(cats)])
        )

    def pixel(maps):
        mean = reference_report(eval_set, maps.astype(np.float32), masks, cfg.fpr_limit)[0]["mean"]
        return mean["pixel_auroc"], mean["aupro"]

    rows = [{"k": 0, "w": 1.0, "seed": 0, "image_auroc": image_auroc(pred.scores)}]
    rows[0]["pixel_auroc"], rows[0]["aupro"] = pixel(pred.maps)
    pool = reference_pool(manifest, eval_set)
    backbone = FrozenEfficientNet(load_efficientnet_lite0())
    side = cfg.references.image_size
    test = class_features(load_batch(files, None, side)[0], cats, backbone, cfg.references)
    for seed in SEEDS:
        for k in KS:
            drawn = draw_references(pool, k, seed)
            refs = {c: load_batch(row_files(r, roots)[0], None, side)[0] for c, r in drawn.items()}
            found = shot_maps(test, refs, backbone, cfg.references, cfg.eval_size)
            scale = np.array([np.mean(found.loo_scores[c]) for c in cats])
            base_score = np.minimum(map_max(found.maps) / (2 * scale), 1.5)
            base_map = np.minimum(found.maps / (2 * scale[:, None, None]), 1.5)
            for w in WEIGHTS:
                row = {"k": k, "w": w, "seed": seed}
                row["image_auroc"] = image_auroc(w * pred.scores + (1 - w) * base_score)
                row["pixel_auroc"], row["aupro"] = pixel(w * pred.maps + (1 - w) * base_map)
                rows.append(row)
    table = pd.DataFrame(rows).groupby(["k", "w"])[["image_auroc", "pixel_auroc", "aupro"]]
    mean = table.mean().round(3)
    result = {"machine": machine(), "commit": commit(), "rows": rows}
    out = REPO / "benchmarks/results"
    (out / "shots_fusion.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        "# The trained model fused with the k-shot baseline (`python benchmarks/shots_fusion.py`)",
        "",
        f"Commit {result['commit']}; the default model (seed 0) on the unseen classes; w = the "
        "model's weight (0: the baseline alone; k = 0: the model alone); mean over reference "
        f"draws {list(SEEDS)}.",
        "",
        "| k | w | image AUROC | pixel AUROC | AUPRO |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {k} | {w} | {r.image_auroc} | {r.pixel_auroc} | {r.aupro} |"
            for (k, w), r in mean.iterrows()
        ),
        "",
    ]
    (out / "shots_fusion.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
