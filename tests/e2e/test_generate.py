"""`kedro run --pipeline generate` with tiny settings: without a trained model up to the fidelity
report, then, after `kedro run --pipeline train`, the detector's AUROC on generated defects."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers.project import SMALL, make_project, run

from vmad_pipeline.ablation.plan import deep_merge
from vmad_pipeline.datasets.mvtec import read_mvtec

TINY_GENERATE = {
    "generate": {
        "generator": {
            "width": 4,
            "depth": 2,
            "embed_dim": 8,
            "image_size": 32,
            "crop": 16,
            "steps": 3,
            "batch_size": 2,
            "progress": False,
        },
        "per_type": 2,
        "overview": 2,
        "fidelity": {"crop": 32, "batch_size": 8},
        "progress": False,
    }
}
PARAMS = deep_merge(SMALL, TINY_GENERATE)


def run_nodes(project, params, **filters):
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    try:
        with KedroSession.create(project_path=project, runtime_params=params) as session:
            return session.run(pipeline_names=["generate"], **filters)
    finally:
        while mlflow.active_run():
            mlflow.end_run()


@pytest.mark.slow
def test_generate_pipeline(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_nodes(project, PARAMS, to_nodes=["generation_fidelity"])  # no trained model needed
    reports = project / "data/08_reporting/generation"
    assert (reports / "overview.png").stat().st_size > 1000
    assert len(list((project / "data/06_models/generator").glob("*.pt"))) == 1
    tree = project / "data/07_model_output/generated"
    index = pd.read_csv(project / "data/07_model_output/generated_index.csv")
    manifest = read_mvtec(tree, source="generated", progress=False)  # the ingest reader takes it
    assert set(manifest.loc[manifest["label"] == 1, "image_path"]) == set(index["image"])
    types = sorted(set(index["defect_type"]))
    assert len(index) == manifest["category"].nunique() * len(types) * 2
    fidelity = json.loads((reports / "fidelity.json").read_text())
    assert set(fidelity["per_type"]) == {*types, "all"}
    assert fidelity["per_type"]["all"]["outside_exact"] == 1.0  # composited: bit-exact outside
    assert fidelity["per_type"]["all"]["kid_generated"] is not None
    assert "KID gen-real" in (reports / "fidelity.md").read_text()
    assert not (reports / "detector.json").exists()

    run(project, "train", PARAMS)
    run_nodes(project, PARAMS, node_names=["generation_detector"])
    detector = json.loads((reports / "detector.json").read_text())
    overall = detector["per_type"]["all"]
    assert 0.0 <= overall["auroc_generated"] <= 1.0 and 0.0 <= overall["auroc_real"] <= 1.0
    assert overall["n_generated"] == len(index)

    # the detector trained with pasted and generated anomalies reads the same cached generator
    both = deep_merge(PARAMS, {"train": {"synthesis": "both", "steps": 2}})
    run(project, "train", both)
    summary = json.loads((project / "data/08_reporting/training_summary.json").read_text())
    assert summary["generator"]["types"] == types
    assert len(list((project / "data/06_models/generator").glob("*.pt"))) == 1
