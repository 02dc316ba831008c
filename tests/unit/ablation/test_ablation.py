"""The ablation library: planning (deduplication, validation, cache keys) and the reports."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from helpers import REPO

from vmad_pipeline.ablation.plan import data_hash, deep_merge
from vmad_pipeline.ablation.report import report_ablation
from vmad_pipeline.configs import ConfigError
from vmad_pipeline.pipelines.ablation.nodes import plan_ablation


def shipped(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "base" / f"parameters_{name}.yml").read_text())[name]


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    out = deep_merge(base, {"a": {"c": [3]}, "e": {"f": 1}})
    assert out == {"a": {"b": 1, "c": [3]}, "d": 0, "e": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 0}  # not mutated


def test_shipped_plan_has_both_tables_and_trains_shared_cells_once():
    plan = plan_ablation(shipped("ablation"), shipped("train"), shipped("evaluate"), {}, {})
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
    # Every cell is graded on its own words, not the mask's and the type head's.
    assert {p["evaluate"]["ground_words"] for p in plan} == {False}
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
        (
            {"tables": {"t": {"cells": {"bad": {"overides": {}}}}}},
            "ablation.tables.t.cells.bad.overides: unknown parameter",
        ),
    ],
)
def test_bad_ablation_parameters_are_named_before_anything_trains(change, message):
    ablation = {**shipped("ablation"), **change}
    with pytest.raises(ConfigError, match=message):
        plan_ablation(ablation, shipped("train"), shipped("evaluate"), {}, {})


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


def test_table_v_runs_on_its_own_with_the_seeds_modules():
    ablation = shipped("ablation")
    # a plain run computes Tables III and IV; Table V is asked for by name
    assert {
        p["table"] for p in plan_ablation(ablation, shipped("train"), shipped("evaluate"), {}, {})
    } == {
        "table_iii",
        "table_iv",
    }
    only_v = {**ablation, "only": ["table_v"]}
    plan = plan_ablation(only_v, shipped("train"), shipped("evaluate"), {}, {})
    cells = {p["cell"]: p for p in plan if p["seed"] == 0}
    assert set(cells) == {"vmad", "vmad_expert", "vmad_region", "vmad_both", "anomaly_ov"}
    assert len(plan) == 5 * len(ablation["seeds"])
    assert cells["vmad"]["cell_expert"] == "none" and cells["vmad"]["cell_region_tokens"] == "off"
    assert cells["vmad_both"]["cell_expert"] == "anomaly_ov"
    assert cells["vmad_both"]["cell_region_tokens"] == "own_mask"
    alone = cells["anomaly_ov"]
    assert (alone["cell_projector"], alone["cell_dssl"], alone["cell_ltc"]) == ("mlp", False, False)
    with pytest.raises(ConfigError, match="only.*unknown table"):
        plan_ablation({**ablation, "only": ["table_ix"]}, shipped("train"), {}, {}, {})


def test_table_vi_compares_adapters_at_two_budgets_and_the_anomaly_sources():
    ablation = {**shipped("ablation"), "only": ["table_vi", "table_v"]}
    plan = plan_ablation(ablation, shipped("train"), shipped("evaluate"), {}, {})
    vi = {p["cell"]: p for p in plan if p["seed"] == 0 and p["table"] == "table_vi"}
    assert set(vi) == {"vmad", "amoe_same", "amoe_large", "generated", "both"}
    assert [vi[c]["cell_adapter"] for c in ("vmad", "amoe_same", "amoe_large")] == [
        "lora",
        "amoe_lora",
        "amoe_lora",
    ]
    assert [vi[c]["cell_synthesis"] for c in ("vmad", "generated", "both")] == [
        "paste",
        "generated",
        "both",
    ]
    # its LoRA cell is Table V's VMAD cell: trained once
    v = next(p for p in plan if p["table"] == "table_v" and p["cell"] == "vmad" and p["seed"] == 0)
    assert v["params_key"] == vi["vmad"]["params_key"]
    # the same budget: 4 experts of rank 2 hold LoRA r 8's A and B weights (plus the routers)
    from vmad_pipeline.configs import parse_train_params

    _, lora = parse_train_params(vi["vmad"]["train"])
    _, same = parse_train_params(vi["amoe_same"]["train"])
    _, large = parse_train_params(vi["amoe_large"]["train"])
    assert same.amoe.r * same.amoe.n_experts == lora.lora.r
    assert large.amoe.r * large.amoe.n_experts == 4 * lora.lora.r
    assert same.amoe.alpha / same.amoe.r == lora.lora.alpha / lora.lora.r
    # a generated-anomaly cell is keyed by the generator's parameters too; a pasted one is not
    other = {"generator": {"steps": 7}}
    again = plan_ablation(ablation, shipped("train"), shipped("evaluate"), {}, other)
    keys = {(p["table"], p["cell"], p["seed"]): p["params_key"] for p in again}
    assert keys[("table_vi", "generated", 0)] != vi["generated"]["params_key"]
    assert keys[("table_vi", "vmad", 0)] == vi["vmad"]["params_key"]
    assert "generate" in vi["generated"] and "generate" not in vi["vmad"]


def test_report_shows_adapter_and_synthesis_columns_only_where_they_vary():
    results = fake_results()
    _, _, plain, _ = report_ablation(results)
    assert "adapter" not in plain and "synthesis" not in plain  # older cells: lora, paste
    results["cell_adapter"] = ["lora", "lora", "amoe_lora", "amoe_lora"]
    results["cell_synthesis"] = ["paste", "paste", "generated", "generated"]
    results["params_adapter"] = [4096, 4096, 4608, 4608]
    results["router_anomaly_gate_normal"] = [None, None, 0.3, 0.5]
    results["router_anomaly_gate_anomalous"] = [None, None, 0.6, 0.8]
    _, _, markdown, _ = report_ablation(results)
    assert "| B | ltc | - | on | none | off | amoe_lora | 4,608 | generated | 16 |" in markdown
    assert "| A | avgpool | - | on | none | off | lora | 4,096 | paste | 16 |" in markdown
    assert "| B | 0.400 ± 0.141 | 0.700 ± 0.141 |" in markdown  # anomaly experts' gate
    assert "Hierarchical text" not in markdown  # no cell asked the follow-ups
    results["level4_rouge_l"] = [0.2, 0.4, None, None]
    results["follow_up_type_accuracy"] = 0.5
    _, _, markdown, _ = report_ablation(results)
    assert (
        "| A | 0.500 ± 0.000 | 0.500 ± 0.000 | n/a | n/a | n/a | n/a | 0.300 ± 0.141 |" in markdown
    )
    assert "| B | 0.500" not in markdown.split("Hierarchical text")[1]  # B asked none


def test_report_adds_the_modules_own_numbers_under_their_table():
    results = fake_results()
    results["cell_expert"] = ["none", "none", "anomaly_ov", "anomaly_ov"]
    results["cell_region_tokens"] = ["off", "off", "own_mask", "own_mask"]
    for name, value in (
        ("expert_pixel_auroc", 0.7),
        ("no_region_location_accuracy", 0.1),
        ("location_accuracy", 0.4),
        ("oracle_region_location_accuracy", 0.9),
    ):
        results[name] = value
    _, metrics, markdown, _ = report_ablation(results)
    assert "| B | ltc | - | on | anomaly_ov | own_mask | 16 |" in markdown
    assert "expert pixel AUROC" in markdown and "| B | n/a | 0.700 ± 0.000 |" in markdown
    assert "no region, predicted, true" in markdown
    assert "0.100 ± 0.000 | 0.400 ± 0.000 | 0.900 ± 0.000" in markdown
    assert metrics["t"]["b"]["oracle_region_location_accuracy_mean"] == pytest.approx(0.9)
