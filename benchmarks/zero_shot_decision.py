"""Benchmark: the zero-shot decision, and the answer that says it (issue 25: the answer's
balanced accuracy at k = 0 was 0.686 against 0.80).

On projects where `kedro run` has run, each model predicts its split's test images with no
references, on the *training* classes' test images and on the *unseen* classes', and each image's
self-comparison distance (``models.self_comparison.self_maps``, its maximum) is read. Then, per
set, the balanced accuracy, FPR and recall (class means) of:
- the LLM's own word (P(yes) >= 0.5);
- the decision at the model's calibrated threshold on the score with no score factor;
- the same with the score multiplied by ``repeated_score`` where the image's distance stays
  below a cut: the shipped cut (the ``scale``) and others around it;
and each score's image AUROC (class mean). Nothing is chosen on the unseen classes here: the
shipped cut is the scale, chosen before (docs/references.md, "The image against itself").

    python benchmarks/zero_shot_decision.py --projects /tmp/refs/full-0 /tmp/refs/full-1 /tmp/refs/full-2

Writes benchmarks/results/zero_shot_decision.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from default_run import on_projects
from references_far import trained_project
from self_comparison import split_rows

CUTS = (0.45, 0.5, 0.6)  # beside the shipped one, the scale


def _decision(said: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> dict:
    """Class means of the balanced accuracy, FPR and recall of ``said``."""
    per = []
    for c in np.unique(classes):
        s, y = said[classes == c], labels[classes == c]
        fpr, recall = float(s[y == 0].mean()), float(s[y == 1].mean())
        per.append(((recall + 1 - fpr) / 2, fpr, recall))
    mean = np.mean(per, 0)
    names = ("balanced_accuracy", "fpr", "recall")
    return {k: round(float(v), 4) for k, v in zip(names, mean, strict=True)}


def _auroc(scores: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    per = [roc_auc_score(labels[classes == c], scores[classes == c]) for c in np.unique(classes)]
    return round(float(np.mean(per)), 4)


def _side(detector, rows, roots, factor: float) -> dict:
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.images import load_batch, to_model_inputs
    from vmad_pipeline.models.references import flipped
    from vmad_pipeline.models.self_comparison import self_maps

    p, size = detector.predictor, detector.predictor.image_size
    config = p.model.config
    cfg = dataclasses.replace(config.self_comparison, enabled=True, repeated_score=1.0)
    p.model.config = dataclasses.replace(config, self_comparison=cfg)
    images = load_batch(row_files(rows, roots)[0], None, size)[0]
    torch.manual_seed(0)
    pred = p.predict(images, rows.category.tolist(), output_size=size, max_new_tokens=1)
    p.model.config = config
    clip, _ = to_model_inputs(flipped(images), config.vision.image_size)
    with torch.no_grad():
        distance = self_maps(p.model.vision, clip, cfg, size).reshape(len(images), -1).max(1)
    labels, classes, cut = rows.label.to_numpy(), rows.category.to_numpy(), detector.image_threshold
    out = {
        "threshold": round(float(cut), 4),
        "the LLM's word": _decision(pred.p_yes >= 0.5, labels, classes),
        "no score factor": _decision(pred.scores >= cut, labels, classes)
        | {"image_auroc": _auroc(pred.scores, labels, classes)},
    }
    for at in (cfg.scale, *CUTS):
        scores = pred.scores * np.where(distance >= at, 1.0, factor)
        name = f"factor {factor} below {at}" + (" (shipped)" if at == cfg.scale else "")
        out[name] = _decision(scores >= cut, labels, classes) | {
            "image_auroc": _auroc(scores, labels, classes)
        }
    return out


def measure(project: Path) -> dict:
    import yaml

    manifest, splits, roots, detector = trained_project(project)
    train = yaml.safe_load((project / "conf/base/parameters_train.yml").read_text())["train"]
    factor = train["model"]["self_comparison"].get("repeated_score", 0.1)  # the shipped one
    out = {}
    for side in ("training", "unseen"):
        out[side] = _side(detector, split_rows(manifest, splits, side), roots, factor)
        print(project.name, side, out[side], flush=True)
    return out


if __name__ == "__main__":
    on_projects(__doc__, "zero_shot_decision", measure)
