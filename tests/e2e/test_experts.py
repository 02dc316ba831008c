"""The seeds' modules through Kedro: `kedro run --pipeline train` with Anomaly-OV's expert and
IAD-Unify's region tokens on, then evaluate: stage 1 is its own node and is reused, the expert's
map and the region settings reach metrics.json."""

from __future__ import annotations

import json

import pytest
from helpers.project import SMALL, make_project, run

from vmad_pipeline.ablation.plan import deep_merge

MODULES = deep_merge(
    SMALL,
    {
        "train": {
            "model": {
                "expert": {"name": "anomaly_ov", "width": 16, "steps": 3, "batch_size": 4},
                "region_tokens": {"enabled": True, "source": "own_mask"},
            }
        }
    },
)


@pytest.mark.slow
def test_train_and_evaluate_with_both_modules(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run(project, "train", MODULES)
    stage1 = list((project / "data" / "06_models" / "expert_stage").glob("*.pt"))
    assert len(stage1) == 1
    summary = json.loads((project / "data/08_reporting/training_summary.json").read_text())
    assert summary["expert_stage"]["reused"] is False
    assert summary["visual_tokens"] == 4 + 1 + 4 + 4  # visual, adverb, suspicious, region

    run(project, "train", MODULES)  # the same stage 1: reused, not trained again
    summary = json.loads((project / "data/08_reporting/training_summary.json").read_text())
    assert summary["expert_stage"]["reused"] is True

    run(project, "evaluate", MODULES)
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    mean = metrics["mean"]
    assert 0.0 <= mean["expert_pixel_auroc"] <= 1.0
    for setting in ("no_region", "oracle_region"):
        assert 0.0 <= mean[f"{setting}_answer_accuracy"] <= 1.0
    table = (project / "data/08_reporting/metrics_per_class.md").read_text()
    assert "Expert P-AUROC" in table and "True-region loc acc" in table
