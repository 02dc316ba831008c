"""Benchmark: the decision and the answer with ONE normal reference (issue 25: k = 1 had no
references-only threshold, so it decided at the model's own calibrated one and the answer was
the LLM's word).

On the unseen classes of projects where `kedro run` has run (one per training seed), with the
evaluation's k = 1 draw (``evaluate.shot_seed``): the reference, read with its flips, gives four
view-against-the-others scores (``inference.references.reference_set``); their maximum
(``loo_max``, never below the model's own threshold) is the threshold. Reports, per project,
the decision's balanced accuracy, FPR and recall at the model's own threshold and at the views'
one, and the answer's balanced accuracy as the LLM says it and as it follows the decision.

    python benchmarks/one_reference.py --projects /tmp/refs5/full-0 /tmp/refs5/full-1 /tmp/refs5/full-2

Writes benchmarks/results/one_reference.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from answer_decision import balanced
from default_run import on_projects
from references_far import evaluate_config, trained_project, unseen_tests


def _rates(said: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "balanced_accuracy": round(balanced(said, labels), 4),
        "fpr": round(float(said[labels == 0].mean()), 4),
        "recall": round(float(said[labels == 1].mean()), 4),
    }


def measure(project: Path) -> dict:
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.evaluation.shots import draw_references, reference_pool
    from vmad_pipeline.images import load_batch
    from vmad_pipeline.inference.references import reference_set

    manifest, splits, roots, detector = trained_project(project)
    cfg = evaluate_config(project)
    p, floor = detector.predictor, detector.thresholds.get("image_threshold")
    tests, images = unseen_tests(manifest, splits, roots, p.image_size)
    drawn = draw_references(reference_pool(manifest, tests), 1, cfg.shot_seed)
    own, views, llm, follows, labels, per_class = [], [], [], [], [], {}
    for cls, rows in drawn.items():
        ref = load_batch(row_files(rows, roots)[0], None, p.image_size)[0]
        found = reference_set(
            p, ref, cls, rule=cfg.references.model_threshold, floor=floor, output_size=cfg.eval_size
        )
        idx = np.where(tests.category == cls)[0]
        kwargs = {"output_size": cfg.eval_size, "references": [found.memory] * len(idx)}
        said = p.predict(images[idx], [cls] * len(idx), **kwargs)
        decided = p.predict(
            images[idx], [cls] * len(idx), thresholds=[found.threshold] * len(idx), **kwargs
        )
        scores = np.asarray(said.scores)
        own += (scores >= floor).tolist()
        views += (scores >= found.threshold).tolist()
        llm += [a.strip().lower().startswith("yes") for a in said.answers]
        follows += [a.strip().lower().startswith("yes") for a in decided.answers]
        labels += tests.label.to_numpy()[idx].tolist()
        per_class[cls] = {"view_scores": [round(s, 4) for s in found.loo_scores]}
        per_class[cls]["threshold"] = round(found.threshold, 4)
        print(cls, per_class[cls], flush=True)
    lab = np.array(labels)
    out = {
        "model_threshold": round(float(floor), 4),
        "decision_at_the_model_threshold": _rates(np.array(own), lab),
        "decision_at_the_views_threshold": _rates(np.array(views), lab),
        "answer_the_llm_says": _rates(np.array(llm), lab),
        "answer_following_the_decision": _rates(np.array(follows), lab),
        "per_class": per_class,
    }
    print(project, {k: v for k, v in out.items() if k != "per_class"}, flush=True)
    return out


if __name__ == "__main__":
    on_projects(__doc__, "one_reference", measure)
