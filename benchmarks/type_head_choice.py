"""Benchmark: how the defect-type head reads a region, choice by choice (docs/words.md,
"Choosing the head").

On a project where `kedro run` has run: each variant (the cut around the mask, the size the
tower reads, the classifier's settings) is fitted on the training classes' typed defect images
(true masks), as ``training.type_head`` fits the head. Reported per variant:
- held out (training classes only): each training class named by a head fitted on the others,
  and each defect type left unnamed by a head fitted without it; accuracy never abstaining, and
  the threshold chosen as training chooses it (0.85 precision, 0.8 of a held-out type unnamed)
  with its figures: what a choice can be made on without the test classes;
- unseen (the split's test classes, true masks): accuracy never abstaining, and at the chosen
  threshold the share named, its precision and the accuracy (abstentions wrong).
The tower is the frozen ImageNet EfficientNet-Lite0 of the small preset, untouched by training,
so the figures do not depend on the training seed. Writes benchmarks/results/type_head_choice.json.

    python benchmarks/type_head_choice.py --project <clone after kedro run>
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from default_run import on_project

from vmad_pipeline.configs.train import TypeHeadConfig
from vmad_pipeline.datasets.manifest import row_files
from vmad_pipeline.images import load_batch, to_model_inputs
from vmad_pipeline.models.efficientnet import FrozenEfficientNet, load_efficientnet_lite0
from vmad_pipeline.models.type_head import region_descriptors
from vmad_pipeline.training.type_head import (
    choose_min_probability,
    classifier,
    held_out_predictions,
    typed_rows,
)

SIZE = 128  # the small preset's image size
LEVELS = [1, 2, 3]
VARIANTS = {  # name: (crop, input size, C, standardised and balanced)
    "cut 1.5 at 128 px, C 1 (before)": (1.5, None, 1.0, False),
    "cut 1.5 at 128 px, standardised, balanced, C 0.1": (1.5, None, 0.1, True),
    "cut 1.5 at 224 px, C 1": (1.5, 224, 1.0, False),
    "cut 1.5 at 224 px, standardised, balanced, C 0.1": (1.5, 224, 0.1, True),
    "cut 1.25 at 224 px, standardised, balanced, C 0.1": (1.25, 224, 0.1, True),
    "cut 1.0 at 224 px, C 1": (1.0, 224, 1.0, False),
    "cut 1.0 at 224 px, standardised, balanced, C 0.1 (the default)": (1.0, 224, 0.1, True),
    "cut 1.0 at 256 px, standardised, balanced, C 0.1": (1.0, 256, 0.1, True),
}


class _Tower:
    """The small preset's frozen backbone, as ``region_descriptors`` reads a tower."""

    def __init__(self) -> None:
        self.backbone = FrozenEfficientNet(load_efficientnet_lite0()).eval()

    def native_levels(self, images):
        return self.backbone(images)


def _classifier(c: float, standardised: bool):
    """The head's classifier (standardised, balanced), or a plain logistic regression."""
    from sklearn.linear_model import LogisticRegression

    return classifier(c, True) if standardised else LogisticRegression(C=c, max_iter=5000)


def measure(project: Path) -> dict:
    split = json.loads((project / "data/05_model_input/splits.json").read_text())
    manifest = pd.read_parquet(project / "data/02_intermediate/manifest.parquet")
    roots = json.loads((project / "data/02_intermediate/dataset_roots.json").read_text())
    train = typed_rows(manifest[manifest.category.isin(split["train_classes"])])
    test = manifest[manifest.category.isin(split["test_classes"]) & (manifest.label == 1)]
    test = test.reset_index(drop=True)
    tower, out = _Tower(), {}
    y, truth = train.defect_type.to_numpy(), test.defect_type.fillna("").to_numpy()

    def descriptors(rows, crop, size):
        images, masks = load_batch(*row_files(rows, roots), SIZE)[:2]
        x = to_model_inputs(images, SIZE)[0]
        return region_descriptors(tower, x, (masks > 0).float(), LEVELS, 16, size, crop)

    for name, (crop, size, c, standardised) in VARIANTS.items():
        start = time.perf_counter()
        with torch.no_grad():
            fit_x, test_x = descriptors(train, crop, size), descriptors(test, crop, size)
        seconds = time.perf_counter() - start

        def fit(keep, fit_x=fit_x, c=c, standardised=standardised):
            return _classifier(c, standardised).fit(fit_x[keep], y[keep])

        names, probs, held_truth, _ = held_out_predictions(fit, fit_x, y, train.category.to_numpy())
        novel = held_out_predictions(fit, fit_x, y, y)[1]
        cfg = TypeHeadConfig()
        chosen, held = choose_min_probability(
            names, probs, held_truth, cfg.min_precision, novel, cfg.min_novel_abstention
        )
        clf = fit(np.ones(len(y), bool))
        p = clf.predict_proba(test_x)
        said = clf.classes_[p.argmax(1)]
        named = p.max(1) >= chosen
        right = said == truth
        out[name] = {
            "held_out_accuracy": round(float((names == held_truth).mean()), 3),
            "held_out_at_threshold": held,
            "unseen_accuracy": round(float(right.mean()), 3),
            "unseen_named_share": round(float(named.mean()), 3),
            "unseen_precision": round(float(right[named].mean()), 3) if named.any() else None,
            "unseen_accuracy_at_threshold": round(float((right & named).mean()), 3),
            "descriptor_ms_per_image": round(1000 * seconds / (len(train) + len(test)), 1),
        }
        print(name, out[name], flush=True)
    out["images"] = {"training_typed": len(train), "unseen_anomalous": len(test)}
    return out


if __name__ == "__main__":
    torch.set_num_threads(2)
    on_project(__doc__, "type_head_choice", measure, "variants")
