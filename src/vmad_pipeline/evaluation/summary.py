"""The few lines a user reads at the end of an evaluating run (as anomalib prints its test
metrics): the unseen classes' headline metrics, the decision counts at the calibrated
threshold, the k-shot baseline, where the reports are and how to open them."""

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
    for k, block in sorted(((shots or {}).get("shots") or {}).items(), key=lambda kv: int(kv[0])):
        base = block.get("mean", {})
        lines.append(
            f"  with {k} normal reference(s), the nearest-normal-patch baseline: image AUROC "
            f"{_number(base.get('image_auroc'))}, AUPRO {_number(base.get('aupro'))}"
        )
    lines += [
        f"Reports: {reports} (metrics.json, metrics_per_class.md, answers.csv, overlays.png)",
        "Open: mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000",
        "      kedro viz run",
    ]
    return lines
