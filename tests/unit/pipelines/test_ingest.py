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
from vmad_pipeline.configs.ingest import ValidationConfig
from vmad_pipeline.datasets.listing import RULES
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.mvtec import list_mvtec
from vmad_pipeline.datasets.registry import FORMATS
from vmad_pipeline.datasets.validation import ManifestValidationError
from vmad_pipeline.pipelines.ingest.nodes import (
    accept_manifest,
    map_defects,
    read_sources,
    validate_manifest,
)

TAXONOMY = taxonomy_params()
SIDE = ValidationConfig().min_side  # the smallest image the default suite accepts

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


def after_reading(raw, roots, problems, params) -> tuple:
    """The ingest nodes after read_sources: (manifest, roots, quarantine), or the error of the
    last (under on_error: raise it names every problem and every broken row rule at once)."""
    manifest, quarantine = map_defects(raw, problems, TAXONOMY, params)
    manifest, quarantine, report = validate_manifest(manifest, roots, quarantine, params)
    return accept_manifest(manifest, roots, quarantine, report)


def test_unknown_defect_names_are_reported_then_mapped(tmp_path: Path) -> None:
    build_mpdd_like(tmp_path / "m", "wobbly")
    write_image(tmp_path / "m/bracket_black/test/wobbly/001.png")
    write_mask(tmp_path / "m/bracket_black/ground_truth/wobbly/001.png")
    src = {"name": "m", "format": "mpdd", "root": str(tmp_path / "m")}
    params = {"progress": False, "workers": 1, "cache": None, "sources": [src]}
    raw, roots, problems = read_sources("unused", params)
    with pytest.raises(
        IngestError,
        match=re.escape(
            "[unknown_defect] defect name 'wobbly' of source 'm' maps to no taxonomy type (2 file(s): "
            "bracket_black/test/wobbly/000.png, bracket_black/test/wobbly/001.png)"
        ),
    ):
        after_reading(raw, roots, problems, params)
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
    raw, roots, problems = read_sources("unused", params)
    assert {p["rule"]: p["file"] for p in problems} == expected
    with pytest.raises(IngestError) as info:
        after_reading(raw, roots, problems, params)
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
    build_mpdd_like(root, "hole", size=(SIDE, SIDE))
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


# ------------------------------------------------- validation, truncation, and quarantine


def ingest(root: Path, on_error: str = "raise", **validation) -> tuple:
    """Every ingest node in turn on one MVTec-layout source: (manifest, roots, quarantine)."""
    params = {
        "progress": False,
        "workers": 1,
        "cache": None,
        "on_error": on_error,
        "validation": {"progress": False, **validation},
        "sources": [{"name": "m", "format": "mpdd", "root": str(root)}],
    }
    return after_reading(*read_sources("unused", params), params)


def good_tree(root: Path) -> Path:
    build_mpdd_like(root, "hole", size=(SIDE, SIDE))
    write_image(root / "bracket_black/train/good/001.png", size=(SIDE, SIDE))
    write_image(root / "bracket_black/test/hole/001.png", size=(SIDE, SIDE))
    write_mask(root / "bracket_black/ground_truth/hole/001.png", size=(SIDE, SIDE))
    return root


def test_default_minimum_side_fits_the_synthetic_floor() -> None:
    assert 16 <= SIDE <= 32  # the synthetic generator's smallest image_size is 32


def test_one_pixel_image_is_refused_naming_file_and_rule(tmp_path: Path) -> None:
    root = good_tree(tmp_path / "m")
    write_image(root / "bracket_black/train/good/dot.png", size=(1, 1))
    with pytest.raises(ManifestValidationError) as info:
        ingest(root)
    assert re.search(
        r"'width/height within limits' failed for 1 row\(s\): m:bracket_black/train/good/dot.png",
        str(info.value),
    )
    manifest, _, quarantine = ingest(root, "quarantine")
    assert "bracket_black/train/good/dot.png" not in set(manifest["image_path"])
    assert len(manifest) == 5
    [problem] = quarantine["problems"]
    assert (problem["rule"], problem["file"]) == (
        "image_size_limits",
        "bracket_black/train/good/dot.png",
    )
    assert "1x1" in problem["message"] and f"min_side {SIDE}" in problem["message"]


@pytest.mark.parametrize("on_error", ["raise", "quarantine"])
def test_truncated_jpeg_and_png_are_refused_at_ingest(tmp_path: Path, on_error: str) -> None:
    root = good_tree(tmp_path / "m")
    cut = {}
    for name in ("cut.jpg", "cut.png"):
        path = root / "bracket_black/train/good" / name
        write_image(path, size=(SIDE, SIDE))
        path.write_bytes(path.read_bytes()[:-100])  # an interrupted copy: the header is intact
        cut[name] = f"bracket_black/train/good/{name}"
    if on_error == "raise":
        with pytest.raises(IngestError) as info:
            ingest(root)
        for file in cut.values():
            assert re.search(
                rf"\[truncated_image\] truncated image {re.escape(file)}", str(info.value)
            )
        return
    manifest, _, quarantine = ingest(root, on_error)
    assert not set(cut.values()) & set(manifest["image_path"]) and len(manifest) == 5
    assert quarantine["by_rule"]["truncated_image"] == 2
    assert {p["file"] for p in quarantine["problems"]} == set(cut.values())


def _empty_mask(root: Path) -> tuple[str, str]:
    write_mask(root / "bracket_black/ground_truth/hole/001.png", value=0, size=(SIDE, SIDE))
    return "empty_mask", "bracket_black/ground_truth/hole/001.png"


def _small_image(root: Path) -> tuple[str, str]:
    write_image(root / "bracket_black/train/good/small.png", size=(SIDE - 1, SIDE))
    return "image_size_limits", "bracket_black/train/good/small.png"


def _duplicate(root: Path) -> tuple[str, str]:
    train = root / "bracket_black/train/good/001.png"
    (root / "bracket_black/test/good/copy.png").write_bytes(train.read_bytes())
    return "duplicate_image", "bracket_black/test/good/copy.png"


def _graded_mask(root: Path) -> tuple[str, str]:
    write_mask(root / "bracket_black/ground_truth/hole/001.png", value=7, size=(SIDE, SIDE))
    return "mask_values", "bracket_black/ground_truth/hole/001.png"


@pytest.mark.parametrize(
    ("fault", "validation"),
    [
        (_empty_mask, {}),
        (_small_image, {}),
        (_duplicate, {}),
        (_graded_mask, {"mask_values": "binary"}),
    ],
    ids=["empty-mask", "small-image", "duplicate", "non-binary-mask"],
)
def test_quarantine_covers_row_level_validation_rules(
    tmp_path: Path, fault, validation: dict
) -> None:
    root = good_tree(tmp_path / "m")
    rule, file = fault(root)
    assert rule in RULES
    with pytest.raises(ManifestValidationError):
        ingest(root, **validation)
    manifest, _, quarantine = ingest(root, "quarantine", **validation)
    listed = [(p["rule"], p["file"]) for p in quarantine["problems"]]
    assert (rule, file) in listed, listed
    left_out = {p["image_path"] for p in quarantine["problems"]}
    assert not left_out & set(manifest["image_path"])
    assert quarantine["n_rows_quarantined"] == len(left_out) >= 1
    assert quarantine["by_rule"][rule] >= 1
    assert len(manifest) >= 3  # the rest is ingested (and passed the suite again)
    if rule == "duplicate_image":  # every copy goes: which one is right is not known
        assert left_out == {file, "bracket_black/train/good/001.png"}
    json.dumps(quarantine)


def test_source_rule_stays_fatal_under_quarantine(tmp_path: Path) -> None:
    """Quarantine leaves bad rows out; a source left without anomalous test images still stops
    the run (a rule about the whole source)."""
    root = tmp_path / "m"
    build_mpdd_like(root, "hole", size=(SIDE, SIDE))
    write_mask(root / "bracket_black/ground_truth/hole/000.png", value=0, size=(SIDE, SIDE))
    with pytest.raises(ManifestValidationError, match="'source has anomalous test images'.*m"):
        ingest(root, "quarantine")


def test_raise_mode_lists_the_file_problems_and_the_row_rules_at_once(tmp_path: Path) -> None:
    """The first IngestError once listed only what reading the files found (a truncated image);
    a too-small image, a row rule, appeared only in a quarantine run. Now one error names both,
    and nothing is written."""
    root = good_tree(tmp_path / "m")
    cut = root / "bracket_black/train/good/cut.png"
    write_image(cut, size=(SIDE, SIDE))
    cut.write_bytes(cut.read_bytes()[:-100])
    write_image(root / "bracket_black/train/good/small.png", size=(SIDE - 1, SIDE))
    with pytest.raises(IngestError) as info:
        ingest(root)
    message = str(info.value)
    assert "[truncated_image] truncated image bracket_black/train/good/cut.png" in message
    assert (
        "'width/height within limits' failed for 1 row(s): m:bracket_black/train/good/small.png"
        in message
    )
