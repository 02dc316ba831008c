"""The summary printed at the end of an evaluating run (evaluation/summary.py)."""

from __future__ import annotations

from vmad_pipeline.evaluation.summary import run_summary


def test_the_summary_names_the_metrics_the_decision_the_baseline_and_the_way_to_the_reports():
    metrics = {
        "mean": {"image_auroc": 0.8567, "pixel_auroc": 0.95, "aupro": None},
        "settings": {"n_images": 110},
        "decision": {
            "threshold": 0.0279,
            "image_from": "calibrated: fpr@0.05",
            "tp": 60,
            "fn": 0,
            "fp": 30,
            "tn": 20,
        },
    }
    metrics["shots"] = {
        "4": {
            "mean": {"image_auroc": 0.997, "aupro": 0.961, "answer_balanced_accuracy": 0.9},
            "decision": {"fpr": 0.02, "recall": 0.95},
        },
        "batch": {"mean": {"image_auroc": 0.97, "aupro": 0.9}},
        "note": "ignored",
    }
    shots = {"shots": {"4": {"mean": {"image_auroc": 0.995, "aupro": 0.95}}}}
    text = "\n".join(run_summary(metrics, shots, "data/08_reporting/external/other/"))
    assert "Unseen classes (110 test images)" in text and "image AUROC               0.857" in text
    assert "AUPRO                     -" in text  # not computed: a dash, not a zero
    assert "60 defects found, 0 missed, 30 normal images flagged, 20 passed" in text
    assert (
        "with 4 normal reference(s), the nearest-normal-patch baseline: image AUROC 0.995" in text
    )
    assert (
        "with 4 normal reference(s), the model: image AUROC 0.997, AUPRO 0.961, answer balanced"
        " accuracy 0.900; references-only threshold: FPR 0.020, recall 0.950" in text
    )
    assert "in batch mode, the model: image AUROC 0.970" in text
    assert text.index("with 4 normal reference(s), the model") < text.index("in batch mode")
    assert "dvc commit -f dvc.yaml" in text
    assert "Reports: data/08_reporting/external/other/" in text
    assert (
        "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in text
        and "kedro viz run" in text
    )
    assert "decision" not in "\n".join(run_summary({"mean": {}}, None, "r/"))  # none calibrated
