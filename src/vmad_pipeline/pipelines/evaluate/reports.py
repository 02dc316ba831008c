"""Evaluate reports: the per-class table as markdown, curve data for ``dvc plots``, curve figures,
and overlays of the best and worst cases per class. Pure functions of the evaluation results;
files and MLflow artifacts are the catalog's."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline.pipelines.evaluate.nodes import METRICS, image_scores
from vmad_pipeline.pipelines.evaluate.params import parse_eval_params

# Column headers of the markdown table (metric key -> short label).
LABELS = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1_max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "aupro": "AUPRO",
    "pro_200_thresholds": "PRO-200 (approx.)",
    "answer_accuracy": "Ans acc",
    "answer_balanced_accuracy": "Ans bal acc",
    "defect_type_accuracy": "Type acc",
    "location_accuracy": "Loc acc",
}
CASES = ("best anomalous", "worst anomalous", "best normal", "worst normal")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def class_table_markdown(table: pd.DataFrame, report: dict[str, Any]) -> str:
    """The per-class table (one row per class, then the unweighted mean) as a markdown table,
    with the settings it was computed with above it."""
    settings = report["settings"]
    head = ["class", "images", "anomalous", *(LABELS[k] for k in METRICS)]
    lines = [
        "# Evaluation per class",
        "",
        f"Score source `{settings['score_source']}`, evaluation size {settings['eval_size']} px, "
        f"AUPRO exact up to FPR {settings['aupro_fpr_limit']}; PRO-200 is the 200-threshold "
        "approximation, not AUPRO. Mean = unweighted mean over classes; – = undefined.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for r in table.to_dict("records"):
        cells = [r["category"], r["n_images"], r["n_anomalous"], *(r[k] for k in METRICS)]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    counts = report["counts"]
    mean = [
        "**mean**",
        counts["n_images"],
        counts["n_anomalous"],
        *(report["mean"][k] for k in METRICS),
    ]
    lines.append("| " + " | ".join(_fmt(c) for c in mean) + " |")
    return "\n".join(lines) + "\n"


def _file_key(category: str) -> str:
    """A class name as a file name (anything but letters, digits, ``._-`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", category)


def _sample_curve(fpr: np.ndarray, pro: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """PRO of the exact polyline at each grid FPR. The polyline has vertical steps (several points
    at one FPR), so plain ``np.interp`` is undefined there: between two FPR values the segment
    runs from the last point at the lower one to the first point at the higher one; at a point's
    own FPR the last (upper) value is taken."""
    right = np.searchsorted(fpr, grid, side="right")  # first point with fpr > g
    left = right - 1  # last point with fpr <= g
    inside = right < fpr.size
    r = np.where(inside, right, left)
    x0, x1, y0, y1 = fpr[left], fpr[r], pro[left], pro[r]
    t = np.divide(grid - x0, x1 - x0, out=np.zeros_like(grid), where=x1 > x0)
    return y0 + (y1 - y0) * t


def curve_data(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    params: dict[str, Any],
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Per class: the image ROC curve (fpr, tpr), the image PR curve (recall, precision) and the
    PRO curve (fpr, pro) sampled at ``curve_points`` FPR values up to ``fpr_limit`` (the AUPRO
    number itself is exact). Keys are class names made file-safe; a class where a curve is
    undefined (one label only / no anomalous pixel) has no file for it."""
    from vmad_pipeline.metrics import image_pr_curve, image_roc_curve, pro_curve

    cfg = parse_eval_params(params)
    labels = eval_set["label"].to_numpy().astype(np.int64)
    scores = image_scores(predictions, params)
    grid = np.linspace(0.0, cfg.fpr_limit, cfg.curve_points)
    roc, pr, pro = {}, {}, {}
    for cls, idx in eval_set.groupby("category").indices.items():
        key = _file_key(str(cls))
        if 0 < labels[idx].sum() < len(idx):
            fpr, tpr = image_roc_curve(labels[idx], scores[idx])
            roc[key] = pd.DataFrame({"fpr": fpr, "tpr": tpr})
            recall, precision = image_pr_curve(labels[idx], scores[idx])
            pr[key] = pd.DataFrame({"recall": recall, "precision": precision})
        class_masks = [masks[i] for i in idx]
        if any(m.any() for m in class_masks):
            curve = pro_curve(class_masks, [predictions["maps"][i] for i in idx], cfg.fpr_limit)
            if curve is not None:
                pro[key] = pd.DataFrame({"fpr": grid, "pro": _sample_curve(*curve, grid)})
    return roc, pr, pro


def _curve_figure(
    curves: dict[str, pd.DataFrame],
    x: str,
    y: str,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    values: dict[str, float | None],
    metric: str,
    xlim: float = 1.0,
    diagonal: bool = False,
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    for i, (key, df) in enumerate(sorted(curves.items())):
        value = values.get(key)
        label = f"{key} ({metric} {value:.3f})" if value is not None else key
        ax.plot(df[x], df[y], lw=1.6, color=colours(i % colours.N), label=label)
    if diagonal:
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set(xlim=(0, xlim), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8, loc="lower right", framealpha=0.85)
    else:
        ax.text(0.5, 0.5, "undefined for every class", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def plot_curves(
    roc: dict[str, pd.DataFrame],
    pr: dict[str, pd.DataFrame],
    pro: dict[str, pd.DataFrame],
    report: dict[str, Any],
):
    """Three figures, one line per class each: image ROC, image PR, PRO up to the FPR limit.
    Curves are data frames, or loaders of them (a partitioned dataset loads lazily)."""
    roc, pr, pro = (
        {k: v() if callable(v) else v for k, v in curves.items()} for curves in (roc, pr, pro)
    )
    per_class = {_file_key(c): v for c, v in report["per_class"].items()}
    settings = report["settings"]
    source = settings["score_source"]
    limit = settings["aupro_fpr_limit"]

    def values(metric: str) -> dict[str, float | None]:
        return {k: v.get(metric) for k, v in per_class.items()}

    fig_roc = _curve_figure(
        roc,
        "fpr",
        "tpr",
        title=f"Image ROC per class (score: {source})",
        xlabel="false positive rate",
        ylabel="true positive rate",
        values=values("image_auroc"),
        metric="AUROC",
        diagonal=True,
    )
    fig_pr = _curve_figure(
        pr,
        "recall",
        "precision",
        title=f"Image precision-recall per class (score: {source})",
        xlabel="recall",
        ylabel="precision",
        values=values("image_ap"),
        metric="AP",
    )
    fig_pro = _curve_figure(
        pro,
        "fpr",
        "pro",
        title=f"Per-region overlap up to FPR {limit} ({settings['eval_size']} px)",
        xlabel="false positive rate (pixels)",
        ylabel="per-region overlap",
        values=values("aupro"),
        metric="AUPRO",
        xlim=limit,
    )
    return fig_roc, fig_pr, fig_pro


def pick_cases(labels: np.ndarray, scores: np.ndarray, n: int) -> dict[str, list[int]]:
    """Positions (into ``labels``) of the best and worst cases by image score vs label: best
    anomalous = highest scores among anomalous images, worst anomalous = lowest (missed defects),
    best normal = lowest scores among normal images, worst normal = highest (false alarms);
    ``n`` each, fewer when the class has fewer images of that label. Ties keep file order."""
    anomalous = np.flatnonzero(labels == 1)
    normal = np.flatnonzero(labels == 0)
    by_score_a = anomalous[np.argsort(-scores[anomalous], kind="stable")]
    by_score_n = normal[np.argsort(scores[normal], kind="stable")]
    return {
        "best anomalous": by_score_a[:n].tolist(),
        "worst anomalous": by_score_a[::-1][:n].tolist(),
        "best normal": by_score_n[:n].tolist(),
        "worst normal": by_score_n[::-1][:n].tolist(),
    }


def plot_overlays(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    roots: dict[str, str],
    params: dict[str, Any],
):
    """One row per class, ``n_overlays`` columns per case of :func:`pick_cases`: the image with
    the anomaly map over it and the ground-truth outline (lime), titled with case and score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vmad_pipeline.datasets.manifest import image_file
    from vmad_pipeline.training.data import load_rgb

    cfg = parse_eval_params(params)
    n = max(1, cfg.n_overlays)
    labels = eval_set["label"].to_numpy().astype(np.int64)
    scores = image_scores(predictions, params)
    groups = list(eval_set.groupby("category").indices.items())
    cols = n * len(CASES)
    fig, axes = plt.subplots(
        len(groups), cols, figsize=(1.9 * cols, 2.2 * len(groups)), squeeze=False
    )
    for row, (cls, idx) in zip(axes, groups, strict=True):
        cases = pick_cases(labels[idx], scores[idx], n)
        for c, case in enumerate(CASES):
            for j in range(n):
                ax = row[c * n + j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(cases[case]):
                    ax.axis("off")
                    continue
                i = idx[cases[case][j]]
                r = eval_set.iloc[i]
                ax.imshow(load_rgb(image_file(roots, r.source, r.image_path), cfg.eval_size))
                ax.imshow(predictions["maps"][i], alpha=0.5, cmap="jet", vmin=0, vmax=1)
                if masks[i].any():
                    ax.contour(masks[i], levels=[0.5], colors="lime", linewidths=1.0)
                kind = (r.defect_type or r.defect_name or "defect") if r.label else "good"
                ax.set_title(f"{case}\n{kind}, score {scores[i]:.2f}", fontsize=7)
        row[0].set_ylabel(str(cls), fontsize=9)
    fig.suptitle(
        f"Best and worst cases per class (score: {cfg.score_source}; map in colour, "
        "ground truth outlined)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
