"""The model evaluated with normal references (docs/evaluation.md, "References").

At each k > 0 of ``evaluate.shots`` the references of every test class are the ones the
nearest-normal-patch baseline gets (``evaluation.shots.draw_references``: seeded, from the
class's normal training images, never its test images); the model inspects every test image
against its class's references and is scored by the same metrics as the zero-shot evaluation,
and decides at each class's references-only threshold (the references' leave-one-out scores,
``evaluate.references.model_threshold``, never below the model's calibrated one). ``batch``: each test image against the other test images of
its class, no labels used. The zero-shot scores stay the top level of metrics.json.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.evaluation.grading import grade_answers
from vmad_pipeline.evaluation.report import compute_metrics
from vmad_pipeline.evaluation.shots import decision_numbers, draw_references, shot_decision
from vmad_pipeline.inference.references import batch_references, reference_set, row_memories

log = logging.getLogger(__name__)


def model_shot_report(
    detector,
    eval_set: pd.DataFrame,
    images: torch.Tensor,
    masks: list[np.ndarray],
    load_references,
    pool: pd.DataFrame,
    cfg: EvaluateConfig,
    taxonomy: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """``{"<k>": report, "batch": report}`` (each: ``mean``, ``per_class``, ``decision`` and
    the references used) and the flat MLflow metrics (``<k>/...``). ``images``: the test images
    at the model's input size; ``load_references(rows)``: those rows' images, likewise;
    ``pool``: the rows references are drawn from."""
    predictor = detector.predictor
    cats = [str(c) for c in eval_set["category"]]
    out: dict[str, Any] = {}
    flat: dict[str, float] = {}
    for k in sorted(s for s in cfg.shots if s > 0):
        drawn = draw_references(pool, k, cfg.shot_seed)
        sets = {
            c: reference_set(
                predictor,
                load_references(rows),
                c,
                rule=cfg.references.model_threshold,
                seed=cfg.shot_seed,
                output_size=cfg.eval_size,
                floor=detector.thresholds.get("image_threshold"),
            )
            for c, rows in drawn.items()
            if len(rows)
        }
        thresholds = {c: s.threshold for c, s in sets.items()}
        report, numbers = _scored(
            predictor, eval_set, images, masks, row_memories(cats, sets), thresholds, cfg, taxonomy
        )
        report["references"] = {c: list(r["image_path"]) for c, r in drawn.items()}
        report["thresholds"] = thresholds
        report["loo_scores"] = {c: s.loo_scores for c, s in sets.items()}
        # normal training images all: any left out as anomalous (inference.references.outliers)
        # is a false alarm of that rule, counted here
        report["left_out"] = {
            c: [drawn[c]["image_path"].iloc[i] for i in s.left_out]
            for c, s in sets.items()
            if s.left_out
        }
        out[str(k)] = report
        numbers["references_left_out"] = float(sum(len(s.left_out) for s in sets.values()))
        flat |= {f"{k}/{name}": v for name, v in numbers.items()}
    if cfg.batch_references:
        keys = [str(i) for i in range(len(images))]
        refs = batch_references(
            predictor, keys, cats, lambda ks: (ks, images[[int(k) for k in ks]]), seed=cfg.shot_seed
        )
        memories = refs.memories(keys, cats)
        report, numbers = _scored(predictor, eval_set, images, masks, memories, {}, cfg, taxonomy)
        out["batch"] = report
        flat |= {f"batch/{name}": v for name, v in numbers.items()}
    return out, flat


def _scored(predictor, eval_set, images, masks, memories, thresholds, cfg, taxonomy):
    """The model's metrics with each image's reference memory, and the decision at the
    references-only thresholds (None where no class has one), which the answers' Yes / No
    follow (``Predictor.predict``'s ``thresholds``)."""
    cats = [str(c) for c in eval_set["category"]]
    cuts = [thresholds.get(c) for c in cats]
    pred = predictor.predict(
        images,
        cats,
        output_size=cfg.eval_size,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        references=memories,
        thresholds=cuts if any(c is not None for c in cuts) else None,
    )
    graded = grade_answers(eval_set, pred.as_dict(), masks, taxonomy)
    report, flat, _ = compute_metrics(eval_set, pred, masks, graded, cfg)
    decision = shot_decision(eval_set, np.asarray(pred.scores), thresholds)
    flat |= decision_numbers(decision)
    mean = report["mean"]
    log.info(
        "the model with references: image AUROC %s, pixel AUROC %s, AUPRO %s, answer balanced "
        "accuracy %s; references-only threshold: FPR %s, recall %s",
        *(mean.get(m) for m in ("image_auroc", "pixel_auroc", "aupro", "answer_balanced_accuracy")),
        *((decision or {}).get(m) for m in ("fpr", "recall")),
    )
    kept = {k: report[k] for k in ("mean", "per_class", "counts") if k in report}
    scores = [round(float(v), 6) for v in pred.scores]  # for other threshold rules, offline
    return {**kept, "decision": decision, "scores": scores}, flat
