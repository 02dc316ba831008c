"""The few lines a user reads at the end of an evaluating run (as anomalib prints its test
metrics): the unseen classes' headline metrics, the decision counts at the calibrated
threshold, the model with k normal references and in batch mode beside the k-shot baseline,
where the reports are, how to open them, and how DVC learns of the run."""

from __future__ import annotations

from typing import Any

HEADLINE = (
    ("image AUROC", "image_auroc"),
    ("pixel AUROC", "pixel_auroc"),
    ("AUPRO", "aupro"),
    ("answer balanced accuracy", "answer_balanced_accuracy"),
    ("P(yes) AUROC", "p_yes_auroc"),
    ("location accuracy", "location_accuracy"),
)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_summary(metrics: dict[str, Any], shots: dict[str, Any] | None, reports: str) -> list[str]:
    """The summary's lines from ``metrics.json`` and ``shots_metrics.json`` (as saved)."""
    mean = metrics.get("mean", {})
    n = (metrics.get("settings") or {}).get("n_images")
    lines = [f"Unseen classes{f' ({n} test images)' if n else ''}, zero-shot:"]
    lines += [f"  {name:<26}{_number(mean.get(key))}" for name, key in HEADLINE]
    decision = metrics.get("decision")
    if decision:
        lines.append(
            f"  decision at {decision.get('threshold', 0):.4f} ({decision.get('image_from', '')}):"
            f" {decision['tp']} defects found, {decision['fn']} missed, {decision['fp']} normal"
            f" images flagged, {decision['tn']} passed"
        )
    model = {k: v for k, v in (metrics.get("shots") or {}).items() if isinstance(v, dict)}
    baseline = (shots or {}).get("shots") or {}
    for k in sorted(set(model) | set(baseline), key=lambda k: (k == "batch", k.zfill(4))):
        lines += _with_references(k, model.get(k), baseline.get(k))
    lines += [
        f"Reports: {reports} (metrics.json, metrics_per_class.md, answers.csv, overlays.png)",
        "Open: mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000",
        "      kedro viz run",
        "DVC:  dvc commit -f dvc.yaml   (records this run in dvc.lock, so dvc status and dvc repro "
        "agree with it)",
    ]
    return lines


def _with_references(k: str, model: dict | None, baseline: dict | None) -> list[str]:
    """The model with ``k`` references (or in batch mode) and the baseline on the same draw."""
    where = "in batch mode" if k == "batch" else f"with {k} normal reference(s)"
    out = []
    if model:
        mean, cut = model.get("mean", {}), model.get("decision") or {}
        line = (
            f"  {where}, the model: image AUROC {_number(mean.get('image_auroc'))}, AUPRO "
            f"{_number(mean.get('aupro'))}, answer balanced accuracy "
            f"{_number(mean.get('answer_balanced_accuracy'))}"
        )
        if cut.get("fpr") is not None:
            line += (
                f"; references-only threshold: FPR {_number(cut['fpr'])}, "
                f"recall {_number(cut.get('recall'))}"
            )
        out.append(line)
    if baseline:
        base = baseline.get("mean", {})
        out.append(
            f"  {where}, the nearest-normal-patch baseline: image AUROC "
            f"{_number(base.get('image_auroc'))}, AUPRO {_number(base.get('aupro'))}"
        )
    return out
