"""The ingest nodes and pipeline: sources read through the registry (MVTec-layout variants,
several formats in one run), defect names mapped per source, and every bad-input rule in raise
and quarantine mode, on tiny trees in the real layouts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO
from helpers.trees import (
    build_bad_tree,
    build_btad,
    build_mpdd_like,
    build_visa,
    build_vision,
    check_manifest,
    taxonomy_params,
    write_image,
    write_mask,
)

from vmad_pipeline.annotation.taxonomy import apply_taxonomy
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.mvtec import list_mvtec
from vmad_pipeline.datasets.registry import FORMATS
from vmad_pipeline.pipelines.ingest.nodes import map_defects, read_sources

TAXONOMY = taxonomy_params()

# ------------------------------------------------------------------ MVTec-layout variants


@pytest.mark.parametrize(
    ("fmt", "defect", "mask_name", "type_name"),
    [
        ("mpdd", "scratches", "000_mask.png", "scratch"),
        ("wfdd", "hole", "000.png", "hole"),
        ("madsim", "Stains", "000_mask.png", "stain"),
    ],
)
def test_mvtec_layout_variants(
    tmp_path: Path, fmt: str, defect: str, mask_name: str, type_name: str
) -> None:
    assert FORMATS[fmt].lister is list_mvtec
    build_mpdd_like(tmp_path / fmt, defect, mask_name)
    params = {
        "progress": False,
        "workers": 1,
        "cache": None,
        "sources": [{"name": fmt, "format": fmt, "root": str(tmp_path / fmt)}],
    }
    raw, roots, problems = read_sources("unused", params)
    assert problems == [] and roots == {fmt: str(tmp_path / fmt)}
    check_manifest(raw, tmp_path / fmt, fmt)
    manifest, report = map_defects(raw, problems, TAXONOMY, params)
    assert manifest.loc[manifest["label"] == 1, "defect_type"].tolist() == [type_name]
    assert report["n_problems"] == 0


def test_several_sources_in_one_run(tmp_path: Path) -> None:
    build_visa(tmp_path / "visa")
    build_btad(tmp_path / "btad")
    build_vision(tmp_path / "vision")
    params = {
        "progress": False,
        "workers": 2,
        "parallel": "thread",
        "cache": None,
        "masks_dir": str(tmp_path / "masks"),
        "sources": [
            {"name": "v", "format": "visa", "root": str(tmp_path / "visa")},
            {"name": "b", "format": "btad", "root": str(tmp_path / "btad")},
            {
                "name": "vis",
                "format": "vision",
                "root": str(tmp_path / "vision"),
                "categories": ["Console"],
            },
        ],
    }
    raw, roots, problems = read_sources("unused", params)
    assert problems == [] and list(dict.fromkeys(raw["source"])) == ["v", "b", "vis"]
    assert roots["vis:masks"] == str(tmp_path / "masks/vis")
    manifest, _ = map_defects(raw, problems, TAXONOMY, params)
    typed = manifest[manifest["label"] == 1].groupby("source")["defect_id"].apply(set).to_dict()
    assert typed["v"] == {-1} and typed["b"] == {-1}  # "anomaly" and "ko": explicitly untyped
    assert typed["vis"] == {0}  # Scratch -> scratch


# ------------------------------------------------------------------------------------ taxonomy


def test_unknown_defect_names_are_reported_then_mapped(tmp_path: Path) -> None:
    build_mpdd_like(tmp_path / "m", "wobbly")
    write_image(tmp_path / "m/bracket_black/test/wobbly/001.png")
    write_mask(tmp_path / "m/bracket_black/ground_truth/wobbly/001.png")
    src = {"name": "m", "format": "mpdd", "root": str(tmp_path / "m")}
    params = {"progress": False, "workers": 1, "cache": None, "sources": [src]}
    raw, _, problems = read_sources("unused", params)
    with pytest.raises(
        IngestError,
        match=re.escape(
            "[unknown_defect] defect name 'wobbly' of source 'm' maps to no taxonomy type (2 file(s): "
            "bracket_black/test/wobbly/000.png, bracket_black/test/wobbly/001.png)"
        ),
    ):
        map_defects(raw, problems, TAXONOMY, params)
    params["sources"] = [{**src, "defect_map": {"wobbly": "deformation"}}]
    manifest, _ = map_defects(raw, problems, TAXONOMY, params)
    assert set(manifest.loc[manifest["label"] == 1, "defect_type"]) == {"deformation"}
    with pytest.raises(IngestError, match="wobbly"):  # the helper the evaluate pipeline uses
        apply_taxonomy(raw, TAXONOMY)


# ------------------------------------------------------------------------------- bad input


def test_bad_input_raises_naming_every_file_and_rule(tmp_path: Path) -> None:
    expected = build_bad_tree(tmp_path / "m")
    params = {
        "progress": False,
        "workers": 1,
        "cache": None,
        "sources": [{"name": "m", "format": "mpdd", "root": str(tmp_path / "m")}],
    }
    raw, _, problems = read_sources("unused", params)
    assert {p["rule"]: p["file"] for p in problems} == expected
    with pytest.raises(IngestError) as info:
        map_defects(raw, problems, TAXONOMY, params)
    for rule, file in expected.items():
        assert re.search(rf"\[{rule}\] .*{re.escape(file)}", str(info.value)), rule


def test_quarantine_ingests_the_rest(tmp_path: Path) -> None:
    build_bad_tree(tmp_path / "m")
    build_visa(tmp_path / "visa")
    csv = tmp_path / "visa/split_csv/1cls.csv"
    csv.write_text(csv.read_text().replace("test,anomaly", "test,bad", 1))  # one malformed line
    params = {
        "progress": False,
        "workers": 1,
        "cache": None,
        "on_error": "quarantine",
        "sources": [
            {"name": "m", "format": "mpdd", "root": str(tmp_path / "m")},
            {"name": "v", "format": "visa", "root": str(tmp_path / "visa")},
        ],
    }
    raw, _, problems = read_sources("unused", params)
    manifest, report = map_defects(raw, problems, TAXONOMY, params)
    assert report["n_problems"] == 6 and report["by_rule"]["malformed_metadata"] == 1
    assert report["n_rows_quarantined"] == 5  # all but the mask without an image
    removed = {p["image_path"] for p in report["problems"] if p["image_path"]}
    assert not removed & set(manifest["image_path"])
    assert "bracket_black/test/hole/000.png" in set(manifest["image_path"])
    assert len(manifest[manifest["source"] == "v"]) == 7  # one CSV line of 8 quarantined
    line = next(p for p in report["problems"] if p["rule"] == "malformed_metadata")
    assert (
        line["file"] == "split_csv/1cls.csv:5"
    )  # header, 3 normal candles, then it and "label 'bad'" in line["message"]
    json.dumps(report)  # the report is plain JSON


def test_failed_run_keeps_previous_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the pipeline: a run with bad input writes nothing; the last good outputs stay."""
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner
    from kedro_datasets.json import JSONDataset
    from kedro_datasets.pandas import ParquetDataset
    from kedro_datasets.yaml import YAMLDataset

    from vmad_pipeline.pipelines.ingest import create_pipeline

    root = tmp_path / "m"
    build_mpdd_like(root, "hole")
    out = tmp_path / "out"
    params = {
        "progress": False,
        "workers": 1,
        "cache": str(out / "cache.parquet"),
        "synthetic": {"enabled": False},
        "sources": [{"name": "m", "format": "mpdd", "root": str(root)}],
    }

    def run() -> None:
        catalog = DataCatalog(
            {
                "params:ingest": MemoryDataset(params),
                "params:ingest.synthetic": MemoryDataset(params["synthetic"]),
                "synthetic_images": MemoryDataset(),
                "taxonomy": YAMLDataset(filepath=str(REPO / "conf/base/taxonomy.yml")),
                "validation_report": JSONDataset(filepath=str(out / "validation_report.json")),
                "manifest": ParquetDataset(filepath=str(out / "manifest.parquet")),
                "dataset_roots": JSONDataset(filepath=str(out / "dataset_roots.json")),
                "ingest_quarantine": JSONDataset(filepath=str(out / "quarantine.json")),
            }
        )
        SequentialRunner().run(create_pipeline(), catalog)

    run()
    first = {p.name: p.read_bytes() for p in out.glob("*") if p.name != "validation_report.json"}
    assert set(first) == {
        "manifest.parquet",
        "dataset_roots.json",
        "quarantine.json",
        "cache.parquet",
    }
    assert len(pd.read_parquet(out / "manifest.parquet")) == 3
    build_bad_tree(root)
    with pytest.raises(Exception, match="unreadable_image"):
        run()
    for name in ("manifest.parquet", "dataset_roots.json", "quarantine.json"):
        assert (out / name).read_bytes() == first[name], name
