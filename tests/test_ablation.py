"""The ablation pipeline: planning (deduplication, validation, cache keys), reuse of finished
cells, nested MLflow runs with the comparison tags, and the reports."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_pipeline_e2e import SMALL, make_project, run

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.pipelines.ablation.nodes import data_hash, deep_merge, plan_ablation
from vmad_pipeline.pipelines.ablation.report import report_ablation

REPO = Path(__file__).resolve().parents[1]


def shipped(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "base" / f"parameters_{name}.yml").read_text())[name]


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    out = deep_merge(base, {"a": {"c": [3]}, "e": {"f": 1}})
    assert out == {"a": {"b": 1, "c": [3]}, "d": 0, "e": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 0}  # not mutated


def test_shipped_plan_has_both_tables_and_trains_shared_cells_once():
    plan = plan_ablation(shipped("ablation"), shipped("train"), shipped("evaluate"), {})
    seeds = shipped("ablation")["seeds"]
    assert seeds == [0, 1, 2]
    cells = {(p["table"], p["cell"]) for p in plan}
    assert {c for t, c in cells if t == "table_iii"} == {
        "ltc0_dssl0",
        "ltc0_dssl1",
        "ltc1_dssl0",
        "ltc1_dssl1",
    }
    projectors = {p["cell_projector"] for p in plan if p["table"] == "table_iv"}
    assert projectors == {"mlp", "avgpool", "resampler", "ldpv2", "ltc"}
    assert len(plan) == len(cells) * len(seeds)

    def key(table, cell, seed=0):
        return next(
            p["params_key"]
            for p in plan
            if (p["table"], p["cell"], p["seed"]) == (table, cell, seed)
        )

    # VMAD appears in both tables; avgpool + DSSL is also the LTC baseline: each trained once.
    assert key("table_iii", "ltc1_dssl1") == key("table_iv", "ltc")
    assert (
        key("table_iii", "ltc0_dssl1")
        == key("table_iv", "avgpool")
        == key("table_iv", "ltc_baseline")
    )
    assert key("table_iii", "ltc1_dssl1", 0) != key("table_iii", "ltc1_dssl1", 1)
    assert len({p["params_key"] for p in plan}) == 9 * len(seeds)
    # Every cell trains with the reduced ablation steps and its own seed.
    assert {p["cell_steps"] for p in plan} == {shipped("ablation")["train"]["steps"]}
    steps = {p["cell"]: p["cell_ltc_steps"] for p in plan if p["table"] == "table_iv"}
    assert steps["ltc_injection"] == "injection"
    assert steps["ltc_multilevel"] == "injection,multi_level"
    assert steps["ltc"] == "local_context,spatial_downsampler,injection,multi_level"


def test_plan_keys_follow_the_parameters():
    ablation, train, evaluate = shipped("ablation"), shipped("train"), shipped("evaluate")
    keys = {p["params_key"] for p in plan_ablation(ablation, train, evaluate, {})}
    longer = deep_merge(ablation, {"train": {"steps": 351}})
    assert keys.isdisjoint(p["params_key"] for p in plan_ablation(longer, train, evaluate, {}))
    other_eval = deep_merge(evaluate, {"eval_size": 64})
    assert keys.isdisjoint(p["params_key"] for p in plan_ablation(ablation, train, other_eval, {}))
    # Display-only changes (labels, titles) keep every key: nothing is retrained.
    relabelled = deep_merge(ablation, {"tables": {"table_iii": {"title": "renamed"}}})
    assert keys == {p["params_key"] for p in plan_ablation(relabelled, train, evaluate, {})}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": []}, "ablation.seeds"),
        ({"seeds": [0, 0]}, "ablation.seeds"),
        ({"tables": {"t": {"cells": {}}}}, "ablation.tables.t.cells"),
        (
            {
                "tables": {
                    "t": {"cells": {"bad": {"overrides": {"model": {"projector": {"name": "x"}}}}}}
                }
            },
            "ablation.tables.t.cells.bad.overrides",
        ),
        ({"tables": {"t": {"cells": {"bad": {"overides": {}}}}}}, "unknown keys"),
    ],
)
def test_bad_ablation_parameters_are_named_before_anything_trains(change, message):
    ablation = {**shipped("ablation"), **change}
    with pytest.raises(ConfigError, match=message):
        plan_ablation(ablation, shipped("train"), shipped("evaluate"), {})


def test_data_hash_changes_with_labels_split_and_answers():
    manifest = pd.DataFrame(
        {
            "source": ["s", "s"],
            "image_path": ["a.png", "b.png"],
            "sha256": ["1", "2"],
            "label": [0, 1],
        }
    )
    splits = {"train_classes": ["x"], "test_classes": ["y"]}
    qa = pd.DataFrame({"image_path": ["b.png"], "description": ["a scratch"]})
    base = data_hash(manifest, splits, qa)
    assert base == data_hash(manifest.copy(), dict(splits), qa.copy())
    assert base != data_hash(manifest.assign(label=[1, 1]), splits, qa)
    assert base != data_hash(manifest, {**splits, "test_classes": ["z"]}, qa)
    assert base != data_hash(manifest, splits, qa.assign(description=["a dent"]))


def fake_results() -> pd.DataFrame:
    rows = []
    for cell, proj, base in (("a", "avgpool", 0.6), ("b", "ltc", 0.8)):
        for seed, delta in ((0, -0.1), (1, 0.1)):
            rows.append(
                {
                    "table": "t",
                    "table_title": "Table T",
                    "cell": cell,
                    "label": cell.upper(),
                    "seed": seed,
                    "cell_projector": proj,
                    "cell_ltc_steps": "",
                    "cell_dssl": True,
                    "visual_tokens": 16,
                    "image_auroc": base + delta,
                    "image_ap": 0.5,
                    "image_f1_max": 0.5,
                    "pixel_auroc": 0.9,
                    "pixel_ap": 0.3,
                    "answer_accuracy": 0.5,
                    "answer_balanced_accuracy": 0.5,
                    "aupro": float("nan") if cell == "a" else 0.7,
                    "params_trainable": 10,
                    "train_seconds": 10.0,
                    "train_images_per_s": 4.0 + seed,
                    "eval_images_per_s": 2.0,
                }
            )
    return pd.DataFrame(rows)


def test_report_gives_mean_and_sample_spread_per_cell():
    results = fake_results()
    results.loc[results["cell"] == "a", "cell_ltc_steps"] = float("nan")  # as read from CSV
    summary, metrics, markdown, figure = report_ablation(results)
    assert "| A | avgpool | - |" in markdown
    assert list(summary["cell"]) == ["a", "b"]
    b = metrics["t"]["b"]
    assert b["image_auroc_mean"] == pytest.approx(0.8)
    assert b["image_auroc_std"] == pytest.approx(0.1414, abs=1e-4)  # sample s.d. of 0.7, 0.9
    assert metrics["t"]["a"]["aupro_mean"] is None  # undefined stays undefined, not 0
    assert "## Table T" in markdown and "| B | ltc |" in markdown
    assert "0.800 ± 0.141" in markdown and "n/a" in markdown
    assert summary.loc[summary["cell"] == "a", "train_images_per_s_mean"].item() == 4.5
    assert len(figure.axes) == 1


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
    assert set(metrics) == {"t3", "t4"} and 0.0 <= metrics["t3"]["vmad"]["pixel_auroc_mean"] <= 1.0
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
    assert (tags["preset"], tags["projector"], tags["dssl"]) == ("tiny", "ltc", "on")
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
