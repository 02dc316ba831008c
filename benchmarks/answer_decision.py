"""Benchmark: how often the answer's Yes / No disagrees with the decision the same inspection
reports, with k normal references (issue 25: the answer's balanced accuracy trails P(yes)).

On the unseen classes of a project where `kedro run` has run, for k = 1 and 4 (the evaluation's
reference draw, ``evaluate.shot_seed``): each test image is inspected with its class's
references; its answer says "Yes" or "No", and its decision is score >= the references-only
threshold (k >= 2) or the model's own calibrated one (k = 1). Reports the disagreements and the
balanced accuracy of each.

    python benchmarks/answer_decision.py --project /tmp/refs3/full-0

Writes benchmarks/results/answer_decision.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from default_run import on_project
from references_far import evaluate_config, trained_project, unseen_tests

KS = (1, 4)


def balanced(said: np.ndarray, labels: np.ndarray) -> float:
    return float((said[labels == 1].mean() + (~said[labels == 0]).mean()) / 2)


def measure(project: Path) -> dict:
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.evaluation.shots import draw_references, reference_pool
    from vmad_pipeline.images import load_batch
    from vmad_pipeline.inference.references import reference_set

    manifest, splits, roots, detector = trained_project(project)
    cfg = evaluate_config(project)
    p, floor = detector.predictor, detector.thresholds.get("image_threshold")
    tests, images = unseen_tests(manifest, splits, roots, p.image_size)
    out = {}
    for k in KS:
        drawn = draw_references(reference_pool(manifest, tests), k, cfg.shot_seed)
        yes, decided, labels = [], [], []
        for cls, rows in drawn.items():
            refs = load_batch(row_files(rows, roots)[0], None, p.image_size)[0]
            found = reference_set(
                p,
                refs,
                cls,
                rule=cfg.references.model_threshold,
                floor=floor,
                output_size=cfg.eval_size,
            )
            idx = np.where(tests.category == cls)[0]
            pred = p.predict(
                images[idx],
                [cls] * len(idx),
                output_size=cfg.eval_size,
                references=[found.memory] * len(idx),
            )
            at = found.threshold if found.threshold is not None else floor
            yes += [a.strip().lower().startswith("yes") for a in pred.answers]
            decided += (np.asarray(pred.scores) >= at).tolist()
            labels += tests.label.to_numpy()[idx].tolist()
        y, d, lab = np.array(yes), np.array(decided), np.array(labels)
        out[str(k)] = {
            "images": len(y),
            "disagree": int((y != d).sum()),
            "answer_balanced_accuracy": round(balanced(y, lab), 4),
            "decision_balanced_accuracy": round(balanced(d, lab), 4),
            "threshold": "references-only" if k >= 2 else "the model's own",
        }
        print(k, out[str(k)], flush=True)
    return out


if __name__ == "__main__":
    on_project(__doc__, "answer_decision", measure, "shots")
