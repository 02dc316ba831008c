"""Figures and tables of the evaluation: the per-class markdown table, the ROC / PR / PRO figures
(one line per class) and the overlays of the best and worst cases per class.

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot's global state
or ``matplotlib.use``: a notebook keeps its own backend and shows them inline.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.datasets.manifest import image_file
from vmad_pipeline.evaluation.curves import file_key
from vmad_pipeline.evaluation.report import METRICS, OPTIONAL_METRICS
from vmad_pipeline.images import load_rgb

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
    "p_yes_auroc": "P(yes) AUROC",
    "defect_type_accuracy": "Type acc",
    "location_accuracy": "Loc acc",
    "follow_up_location_accuracy": "Follow-up loc acc",
    "follow_up_type_accuracy": "Follow-up type acc",
    "level4_description_rouge_l": "L4 description R-L",
    "level4_impact_rouge_l": "L4 impact R-L",
    "level4_suggestion_rouge_l": "L4 suggestion R-L",
    "level4_rouge_l": "L4 ROUGE-L",
    "level4_consistency": "L4 consistent",
    "level4_broken_share": "L4 broken",
    "object_name_accuracy": "Name acc",
    "object_named_share": "Named share",
    "mask_location_accuracy": "Mask loc acc",
    "location_mask_agreement": "Loc = mask",
    "defect_type_precision": "Type prec",
    "defect_type_named_share": "Type named",
    "type_probe_accuracy": "Type probe (true mask)",
    "expert_image_auroc": "Expert I-AUROC",
    "expert_pixel_auroc": "Expert P-AUROC",
    "expert_aupro": "Expert AUPRO",
    **{
        f"{s}_{k}": f"{name} {short}"
        for s, name in (("no_region", "No-region"), ("oracle_region", "True-region"))
        for k, short in (
            ("answer_accuracy", "ans acc"),
            ("location_accuracy", "loc acc"),
            ("defect_type_accuracy", "type acc"),
        )
    },
}
CASES = ("best anomalous", "worst anomalous", "best normal", "worst normal")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def class_table_markdown(table: pd.DataFrame, report: dict[str, Any]) -> str:
    """The per-class table (one row per class, then the unweighted mean) as a markdown table,
    with the settings it was computed with above it; classes the model was trained on, if any,
    follow in a section of their own with their own mean."""
    settings = report["settings"]
    # a module's columns only where the model has it, level 4's only where it was asked
    shown = [k for k in METRICS if k not in OPTIONAL_METRICS or table[k].notna().any()]
    head = ["class", "images", "anomalous", *(LABELS[k] for k in shown)]
    lines = [
        "# Evaluation per class",
        "",
        f"Score source `{settings['score_source']}`, evaluation size {settings['eval_size']} px, "
        f"AUPRO exact up to FPR {settings['aupro_fpr_limit']}; PRO-200 is the 200-threshold "
        "approximation, not AUPRO. Mean = unweighted mean over classes; – = undefined.",
        *_hierarchy_note(shown),
        "",
    ]
    seen = table["seen"].astype(bool) if "seen" in table else pd.Series(False, index=table.index)
    lines += _markdown_rows(head, shown, table[~seen], report)
    if seen.any() and "seen" in report:
        lines += [
            "",
            "## Seen classes (the model was trained on them: not zero-shot, not in the mean above)",
            "",
            *_markdown_rows(head, shown, table[seen], report["seen"]),
        ]
    for k, part in (report.get("shots") or {}).items():
        lines += _shots_rows(k, part, shown)
    return "\n".join(lines) + "\n"


def _shots_rows(k: str, part: dict[str, Any], shown: list[str]) -> list[str]:
    """The section of the model with k references per class (or in batch mode): its classes'
    rows and mean, the columns it has values for."""
    if not isinstance(part, dict) or not part.get("per_class") or "counts" not in part:
        return []
    rows = pd.DataFrame([{"category": c, **v} for c, v in part["per_class"].items()])
    cols = [m for m in shown if m in rows and rows[m].notna().any()]
    head = ["class", "images", "anomalous", *(LABELS[m] for m in cols)]
    title = (
        "## Batch mode (each image against other images of its class; no labels)"
        if k == "batch"
        else f"## With {k} normal reference(s) per class (drawn from its training images)"
    )
    return ["", title, "", *_markdown_rows(head, cols, rows, part)]


def _hierarchy_note(shown: list[str]) -> list[str]:
    """What the level-4 columns are, where they are shown."""
    if "level4_rouge_l" not in shown:
        return []
    return [
        "L4 = level 4 of the hierarchical text evaluation: ROUGE-L F of the description, impact "
        "and suggestion follow-ups against the RIAD answers; consistent: the share of images "
        "whose long answers say nothing their detection answer contradicts; broken: the share "
        "of long answers that break off (docs/evaluation.md)."
    ]


def _markdown_rows(
    head: list[str], shown: list[str], table: pd.DataFrame, report: dict[str, Any]
) -> list[str]:
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for r in table.to_dict("records"):
        cells = [r["category"], r["n_images"], r["n_anomalous"], *(r[k] for k in shown)]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    counts = report["counts"]
    mean = [
        "**mean**",
        counts["n_images"],
        counts["n_anomalous"],
        *(report["mean"][k] for k in shown),
    ]
    lines.append("| " + " | ".join(_fmt(c) for c in mean) + " |")
    return lines


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
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot()
    colours = colormaps["tab10" if len(curves) <= 10 else "tab20"]
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
    per_class = {file_key(c): v for c, v in report["per_class"].items()}
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
    cfg: EvaluateConfig,
):
    """One row per class, ``n_overlays`` columns per case of :func:`pick_cases`: the image with
    the anomaly map over it and the ground-truth outline (lime), titled with case and score."""
    n = max(1, cfg.n_overlays)
    labels = eval_set["label"].to_numpy().astype(np.int64)
    scores = np.asarray(predictions["scores"], dtype=np.float64)
    groups = list(eval_set.groupby("category").indices.items())
    cols = n * len(CASES)
    fig = Figure(figsize=(1.9 * cols, 2.2 * len(groups)))
    axes = fig.subplots(len(groups), cols, squeeze=False)
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
        f"Best and worst cases per class (score: {cfg.score_rule.source}; map in colour, "
        "ground truth outlined)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def plot_shot_roc(labels: np.ndarray, scores: np.ndarray, report: dict[str, Any]):
    """The image ROC of the evaluated images pooled, one line per reference mode: zero-shot
    (``scores``), each k of ``report["shots"]`` and batch (their stored per-image scores); the
    legend holds each mode's headline, the mean of the per-class AUROCs. Without a mode that
    uses references, a figure that says so."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels, dtype=np.int64)
    modes = {"k = 0": (scores, report.get("mean", {}).get("image_auroc"))}
    for key, shot in (report.get("shots") or {}).items():
        if isinstance(shot, dict) and "scores" in shot:
            name = "batch" if key == "batch" else f"k = {key}"
            modes[name] = (shot["scores"], shot.get("mean", {}).get("image_auroc"))
    if len(modes) < 2 or len(set(labels.tolist())) < 2:
        fig = Figure(figsize=(6.4, 1.6))
        fig.text(
            0.5,
            0.5,
            "no evaluation with references (evaluate.shots, evaluate.batch_references)",
            ha="center",
            va="center",
        )
        return fig
    curves, values = {}, {}
    for name, (s, value) in modes.items():
        fpr, tpr, _ = roc_curve(labels, np.asarray(s, dtype=np.float64))
        curves[name], values[name] = pd.DataFrame({"fpr": fpr, "tpr": tpr}), value
    return _curve_figure(
        curves,
        "fpr",
        "tpr",
        title="Image ROC by normal references (images pooled)",
        xlabel="false positive rate",
        ylabel="true positive rate",
        values=values,
        metric="mean per-class AUROC",
        diagonal=True,
    )
