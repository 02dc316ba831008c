"""Benchmark: the image against itself, zero-shot (models/self_comparison.py; issue 25: AUPRO
0.838 at k = 0 against 0.84).

On projects where `kedro run` has run, each model predicts its split's test images with no
references, with the self-comparison off and in several settings (radius, flips, scale), and on
two sets: the *training* classes' test images (the settings are chosen there: no unseen class is
looked at) and the *unseen* classes' (what it gives). Per set, the class means of pixel AUROC,
AUPRO, image AUROC (the project's score rule), the drawn mask's location accuracy (anomalous
images), the self-distance quantiles the ``scale`` is read from, and the cost in ms an image.

    python benchmarks/self_comparison.py --projects /tmp/refs8/full-0 /tmp/refs8/full-1 /tmp/refs8/full-2

Writes benchmarks/results/self_comparison.json.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from default_run import on_projects
from references_far import trained_project

# (name, settings over the shipped ones); None: off
VARIANTS = {
    "off": None,
    "shipped": {},
    "radius 1": {"radius": 1},
    "radius 3": {"radius": 3},
    "no flips": {"flips": False},
    "scale 0.3": {"scale": 0.3},
    "scale 1.0": {"scale": 1.0},
    "the cue's features (levels 0-1, stride 4)": {"levels": (0, 1), "stride": 4},
}


def split_rows(manifest, splits, side: str):
    """The test rows of the split's training classes (``side`` "training") or unseen ones."""
    classes = splits["test_classes" if side == "unseen" else "train_classes"]
    rows = manifest[(manifest.split == "test") & manifest.category.isin(classes)]
    return rows.reset_index(drop=True)


def _metrics(rows, maps, scores, masks, truth) -> dict:
    from sklearn.metrics import roc_auc_score

    from vmad_pipeline.inference.grounding import drawn_regions, region_location
    from vmad_pipeline.metrics.pixel import aupro

    labels = rows.label.to_numpy()
    per = []
    for _, idx in rows.groupby("category").indices.items():
        pixels = np.concatenate([masks[i].ravel() for i in idx])
        per.append(
            (
                roc_auc_score(pixels, maps[idx].ravel()),
                aupro([masks[i] for i in idx], [maps[i] for i in idx]),
                roc_auc_score(labels[idx], scores[idx]),
            )
        )
    bad = labels == 1
    where = [region_location(r) for r in drawn_regions(maps[bad])]
    mean = np.mean(per, 0)
    return {
        "pixel_auroc": round(float(mean[0]), 4),
        "aupro": round(float(mean[1]), 4),
        "image_auroc": round(float(mean[2]), 4),
        "mask_location_accuracy": round(float(np.mean(np.array(where) == truth[bad])), 4),
    }


def _distances(p, images, masks, labels) -> dict:
    """Quantiles of the shipped comparison's distance (before the scale) on normal images'
    pixels and on defect pixels: the scale is read from the training classes' defects."""
    from vmad_pipeline.images import to_model_inputs
    from vmad_pipeline.models.references import flipped
    from vmad_pipeline.models.self_comparison import self_maps

    cfg = p.model.config.self_comparison
    clip, _ = to_model_inputs(flipped(images), p.model.config.vision.image_size)
    d = self_maps(p.model.vision, clip, cfg, masks.shape[-1])
    q = lambda x, qs: [round(float(v), 3) for v in np.quantile(x, qs)]  # noqa: E731
    return {
        "normal_pixels_q50_q99": q(d[labels == 0], [0.5, 0.99]),
        "defect_pixels_q10_q50": q(d[masks], [0.1, 0.5]),
    }


def measure(project: Path) -> dict:

    from vmad_pipeline.annotation.geometry import mask_geometry
    from vmad_pipeline.configs.model import SelfComparisonConfig
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.images import load_batch, load_mask

    manifest, splits, roots, detector = trained_project(project)
    p = detector.predictor
    config, size = p.model.config, p.image_size
    out = {}
    for side in ("training", "unseen"):
        rows = split_rows(manifest, splits, side)
        files, mask_files = row_files(rows, roots)
        images = load_batch(files, None, size)[0]
        masks = np.stack([load_mask(m, size) > 0 for m in mask_files])
        truth = np.array(
            [mask_geometry(m)["location"] if m.any() else "" for m in masks], dtype=object
        )
        out[side] = {}
        for name, change in VARIANTS.items():
            cfg = (
                SelfComparisonConfig(enabled=False)
                if change is None
                else SelfComparisonConfig(enabled=True, **change)
            )
            p.model.config = dataclasses.replace(config, self_comparison=cfg)
            torch.manual_seed(0)
            start = time.perf_counter()
            pred = p.predict(images, rows.category.tolist(), output_size=size, max_new_tokens=1)
            ms = 1000 * (time.perf_counter() - start) / len(rows)
            out[side][name] = {
                **_metrics(rows, pred.maps, pred.scores, masks, truth),
                "ms_an_image": round(ms, 1),
            }
            print(project.name, side, name, out[side][name], flush=True)
        p.model.config = dataclasses.replace(
            config, self_comparison=SelfComparisonConfig(enabled=True)
        )
        out[side]["distances"] = _distances(p, images, masks, rows.label.to_numpy())
        print(project.name, side, out[side]["distances"], flush=True)
    p.model.config = config
    return out


if __name__ == "__main__":
    on_projects(__doc__, "self_comparison", measure)
