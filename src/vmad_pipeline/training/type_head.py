"""Fit the defect-type head (``models.type_head``) on the training classes' defect images.

A multinomial logistic regression (scikit-learn) on the standardised region descriptors of the
true masks, each type weighted alike (``balanced``); the standardisation is folded into the
stored coefficients, so the head reads raw descriptors.
Its abstention threshold is chosen the way the head is used, on classes and types it has not
seen: each training class in turn is held out, the head is fitted on the others and names the
held-out class's defects; and each defect type in turn is held out, so that its defects stand
for a type no training class has (a new product's own kind of defect), which the head should not
name. ``min_probability`` is the lowest probability at which the names given reach the target
precision and the held-out types' defects are left unnamed at the target share (the highest
candidate when none reaches both). With the novelty gate (``cfg.novelty_gate``: the rule for
regions drawn against references), each held-out image also gets its distance to the types of
the head fitted without it (``models.type_head.NoveltyGate``), and the gate's ``max_novelty``
is chosen with a probability of its own: of the pairs that reach both targets, the one naming
the most held-out defects right. The figures of both choices are stored with the head
(``meta``).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch

from vmad_pipeline.configs.train import TypeHeadConfig
from vmad_pipeline.datasets.manifest import row_files
from vmad_pipeline.images import load_batch, to_model_inputs
from vmad_pipeline.models.type_head import NoveltyGate, TypeHead, region_descriptors

log = logging.getLogger(__name__)
CANDIDATES = np.round(np.arange(0.30, 0.96, 0.05), 2)  # min_probability values tried


def typed_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The anomalous rows with a defect type and a mask."""
    typed = rows.get("defect_type", pd.Series([""] * len(rows), index=rows.index)).fillna("")
    keep = (rows["label"] == 1) & (typed != "") & (rows["mask_path"].fillna("") != "")
    return rows[keep].reset_index(drop=True)


def fit_type_head(model, rows: pd.DataFrame, roots: dict[str, str], cfg: TypeHeadConfig):
    """The head for ``model``'s tower from ``rows`` (the training rows: their typed defect
    images), or None with fewer than two types (nothing to tell apart)."""
    start = time.perf_counter()
    typed = typed_rows(rows)
    types = sorted(set(typed["defect_type"]))
    if len(types) < 2:
        log.info(
            "no defect-type head: %d typed defect image(s) of %d type(s)", len(typed), len(types)
        )
        return None
    size = model.config.vision.image_size
    images, masks = load_batch(*row_files(typed, roots), size)[:2]
    device = next(model.parameters()).device
    x = torch.cat(
        [to_model_inputs(images[s : s + 16], size)[0].to(device) for s in range(0, len(images), 16)]
    )
    desc = region_descriptors(
        model.vision, x, (masks > 0).float(), cfg.levels, cfg.grid, cfg.input_size, cfg.crop
    )
    y = typed["defect_type"].to_numpy()

    def fit(keep):
        return classifier(cfg.c, cfg.balanced).fit(desc[keep], y[keep])

    names, probs, truth, far = held_out_predictions(fit, desc, y, typed["category"].to_numpy())
    _, novel, _, novel_far = held_out_predictions(fit, desc, y, y)  # each type held out
    chosen, figures = choose_min_probability(
        names, probs, truth, cfg.min_precision, novel, cfg.min_novel_abstention
    )
    gate = None
    if cfg.novelty_gate:
        gate_probability, max_novelty, gated = choose_thresholds(
            names, probs, truth, far, cfg.min_precision, novel, novel_far, cfg.min_novel_abstention
        )
        if max_novelty is not None:
            gate = novelty_gate(desc, y, max_novelty, gate_probability)
    clf = fit(np.ones(len(y), bool))
    coef, intercept = folded(clf)
    if len(clf.classes_) == 2:  # scikit-learn's binary form (one row: the second class's logit)
        # as two rows whose softmax is that sigmoid
        coef, intercept = (
            np.vstack([-coef / 2, coef / 2]),
            np.hstack([-intercept / 2, intercept / 2]),
        )
    head = TypeHead(
        types=[str(t) for t in clf.classes_],
        coef=coef.tolist(),
        intercept=intercept.tolist(),
        min_probability=chosen,
        levels=list(cfg.levels),
        grid=cfg.grid,
        input_size=cfg.input_size,
        crop=cfg.crop,
        gate=gate,
        meta={
            "n_images": len(typed),
            "per_type": {str(k): int(v) for k, v in typed["defect_type"].value_counts().items()},
            "held_out_classes": figures,
            "held_out_classes_gated": None if gate is None else gated,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    log.info(
        "defect-type head: %d types from %d images; on held-out classes it names %.0f%% of "
        "defects at precision %s (min probability %.2f)",
        len(types),
        len(typed),
        100 * figures["named_share"],
        figures["precision"],
        chosen,
    )
    return head


def classifier(c: float, balanced: bool):
    """The head's classifier, unfitted: standardise, then a multinomial logistic regression
    (inverse regularisation ``c``; ``balanced``: each type weighted alike)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    weights = "balanced" if balanced else None
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=5000, class_weight=weights)
    )


def folded(pipeline) -> tuple[np.ndarray, np.ndarray]:
    """The coefficients and intercepts of a standardise-then-classify pipeline on the raw
    descriptors: w (x - mean) / scale + b = (w / scale) x + (b - w . mean / scale)."""
    scaler, classifier = pipeline[0], pipeline[-1]
    coef = classifier.coef_ / scaler.scale_
    return coef, classifier.intercept_ - coef @ scaler.mean_


def novelty_gate(
    desc: np.ndarray, y: np.ndarray, max_novelty: float, min_probability: float = 0.0
) -> NoveltyGate:
    """The gate of descriptors ``desc`` of types ``y`` (``models.type_head.NoveltyGate``)."""
    centre, scale = desc.mean(0), desc.std(0) + 1e-6
    z = (desc - centre) / scale
    types = sorted(set(y))
    means = np.stack([z[y == t].mean(0) for t in types])
    spread = (z - means[[types.index(t) for t in y]]).var(0) + 1e-3
    return NoveltyGate(
        centre.tolist(),
        scale.tolist(),
        means.tolist(),
        spread.tolist(),
        float(max_novelty),
        float(min_probability),
    )


def held_out_predictions(fit, desc, y, groups):
    """Each image named by a head fitted without its group (its class; or, with ``groups`` =
    ``y``, its type): (names, probabilities, truth, novelty: its distance to the types of that
    head's gate); classes whose images are the only ones of a type still count (a type the head
    lacks then is a wrong name or an abstention, as on a new product); a group whose leaving
    would leave fewer than two types is skipped."""
    names, probs, truth, far = [], [], [], []
    for g in sorted(set(groups)):
        out = groups == g
        if len(set(y[~out])) < 2:
            continue
        clf = fit(~out)
        p = clf.predict_proba(desc[out])
        names += list(clf.classes_[p.argmax(1)])
        probs += list(p.max(1))
        truth += list(y[out])
        far += list(novelty_gate(desc[~out], y[~out], np.inf).novelty(desc[out]))
    return np.array(names, object), np.array(probs), np.array(truth, object), np.array(far)


GATE_QUANTILES = np.linspace(0.05, 1.0, 40)  # max_novelty candidates: these of the held-out's


def choose_thresholds(
    names, probs, truth, far, target: float, novel, novel_far, novel_target: float
) -> tuple[float, float | None, dict]:
    """``min_probability`` and the gate's ``max_novelty`` (None: no gate, ``far`` None): for
    each candidate ``max_novelty`` (:data:`GATE_QUANTILES` of the held-out images' novelty), a
    gated image counts as unnamed, and :func:`choose_min_probability` picks the probability;
    of the pairs that reach both targets, the one naming the most held-out defects right (the
    smallest ``max_novelty`` on a tie); with none, probability alone."""
    alone = choose_min_probability(names, probs, truth, target, novel, novel_target)
    if far is None:
        return alone[0], None, alone[1]
    best = None
    for cut in np.quantile(np.concatenate([far, novel_far]), GATE_QUANTILES):
        gated = choose_min_probability(
            names,
            np.where(far <= cut, probs, 0.0),
            truth,
            target,
            np.where(novel_far <= cut, novel, 0.0),
            novel_target,
        )
        f = gated[1]
        reached = (f["precision"] or 0.0) >= target and (
            f["new_type_abstention"] is None or f["new_type_abstention"] >= novel_target
        )
        if reached and (best is None or f["accuracy"] > best[2]["accuracy"]):
            best = (gated[0], float(cut), {**f, "max_novelty": round(float(cut), 4)})
    return best or (alone[0], None, alone[1])


def choose_min_probability(
    names, probs, truth, target: float, novel=None, novel_target: float = 0.0
) -> tuple[float, dict]:
    """The lowest candidate whose named predictions reach ``target`` precision and below which
    at least ``novel_target`` of ``novel`` (the held-out types' probabilities) fall; else,
    without ``novel_target``, the one of highest precision, and with it the highest candidate.
    With its precision, the share named, the accuracy (abstentions wrong) and the held-out
    types' share left unnamed."""
    novel = np.asarray([] if novel is None else novel)

    def figures(t):
        named = probs >= t
        correct = names == truth
        return {
            "min_probability": float(t),
            "precision": round(float(correct[named].mean()), 4) if named.any() else None,
            "named_share": round(float(named.mean()), 4) if len(named) else 0.0,
            "accuracy": round(float((correct & named).mean()), 4) if len(named) else 0.0,
            "n_images": int(len(named)),
            "new_type_abstention": round(float((novel < t).mean()), 4) if len(novel) else None,
        }

    def reaches(f):
        abstains = f["new_type_abstention"] is None or f["new_type_abstention"] >= novel_target
        return f["precision"] is not None and f["precision"] >= target and abstains

    table = [figures(t) for t in CANDIDATES]
    reached = [f for f in table if reaches(f)]
    if reached:
        best = reached[0]
    elif novel_target > 0 and len(novel):
        best = table[-1]
    else:
        best = max(table, key=lambda f: f["precision"] or 0.0)
    targets = {"target_precision": target, "target_new_type_abstention": novel_target}
    return best["min_probability"], {**best, **targets}
