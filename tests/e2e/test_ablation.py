"""The ablation pipeline through a Kedro session: reuse of finished cells, nested MLflow runs with
the comparison tags, and the reports."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.project import SMALL, make_project, run

TINY_ABLATION = {
    "seeds": [0, 1],
    "train": {"steps": 2, "progress": False},
    "evaluate": {"progress": False},
    "progress": False,
    "tables": {
        "t3": {
            "title": "T3",
            "cells": {
                "base": {
                    "overrides": {
                        "model": {"projector": {"name": "avgpool"}, "dssl": {"enabled": False}}
                    }
                },
                "vmad": {
                    "overrides": {
                        "model": {"projector": {"name": "ltc"}, "dssl": {"enabled": True}}
                    }
                },
            },
        },
        "t4": {
            "title": "T4",
            "cells": {
                "mlp": {
                    "overrides": {
                        "model": {"projector": {"name": "mlp"}, "dssl": {"enabled": True}}
                    }
                },
                "ltc": {
                    "overrides": {
                        "model": {"projector": {"name": "ltc"}, "dssl": {"enabled": True}}
                    }
                },
            },
        },
    },
}


def child_runs(project: Path) -> list:
    """The nested runs in the project's store (a client of its own: no global MLflow state)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(ids) if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.slow
def test_ablation_pipeline_reuses_cells_and_logs_nested_runs(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    (project / "conf" / "base" / "parameters_ablation.yml").write_text(
        yaml.safe_dump({"ablation": TINY_ABLATION}, sort_keys=False)
    )
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run(project, "ablation", SMALL)

    out = project / "data" / "08_reporting" / "ablation"
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 * 2  # 4 table cells x 2 seeds
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["cell"]) == ["base", "vmad", "mlp", "ltc"] and set(summary["n_seeds"]) == {
        2
    }
    tokens = dict(zip(summary["cell"], summary["visual_tokens"], strict=True))
    assert tokens["mlp"] == 4 * tokens["ltc"]  # 2x2 pooling: a quarter of the MLP's tokens
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"t3", "t4"}
    vmad = results.loc[results["cell"] == "vmad", "pixel_auroc"]  # the mean over its seeds
    assert metrics["t3"]["vmad"]["pixel_auroc_mean"] == pytest.approx(vmad.mean(), abs=1e-4)
    assert "## T3" in (out / "ablation.md").read_text()
    assert (out / "ablation.png").stat().st_size > 1000

    store = project / "data" / "07_model_output" / "ablation_cells"
    cells = sorted(store.glob("*.json"))
    assert len(cells) == 3 * 2  # t4/ltc is t3/vmad: 3 distinct cells x 2 seeds
    stamps = {p.name: p.stat().st_mtime_ns for p in cells}

    runs = child_runs(project)
    assert len(runs) == 6 and {r.data.tags["reused"] for r in runs} == {"false"}
    vmad = [r for r in runs if r.data.tags["ablation_cells"] == "t3/vmad,t4/ltc"]
    assert {r.data.tags["seed"] for r in vmad} == {"0", "1"}
    tags = vmad[0].data.tags
    assert (tags["preset"], tags["projector"], tags["dssl"]) == ("small", "ltc", "on")
    assert len(tags["dataset_hash"]) == 32 and "test/pixel_auroc" in vmad[0].data.metrics

    # A rerun with the same parameters and data trains nothing and reports the same numbers.
    run(project, "ablation", SMALL)
    assert {p.name: p.stat().st_mtime_ns for p in store.glob("*.json")} == stamps
    again = child_runs(project)
    assert len(again) == 12 and sum(r.data.tags["reused"] == "true" for r in again) == 6
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), results)

    # One more seed: only its cells train.
    run(project, "ablation", {**SMALL, "ablation": {"seeds": [0, 1, 2]}})
    assert len(list(store.glob("*.json"))) == 3 * 3
