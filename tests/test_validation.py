"""Great Expectations validation of the manifest: a good manifest passes, each rule catches its fault."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vmad_pipeline.datasets.manifest import empty_manifest
from vmad_pipeline.datasets.mvtec import read_mvtec
from vmad_pipeline.datasets.synthetic import SyntheticConfig, generate_synthetic, write_tree
from vmad_pipeline.validation import ManifestValidationError, raise_on_failure, validate_manifest

CONFIG = SyntheticConfig(
    classes=("tile", "capsule"),
    image_size=32,
    n_train_good=2,
    n_test_good=1,
    n_test_defect=1,
    defects_per_class=1,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict[str, str]]:
    root = tmp_path_factory.mktemp("val") / "syn"
    write_tree(generate_synthetic(CONFIG, progress=False), root)
    return read_mvtec(root, source="syn", progress=False), {"syn": str(root)}


def test_good_manifest_passes_with_extra_columns(
    dataset: tuple[pd.DataFrame, dict[str, str]],
) -> None:
    manifest, roots = dataset
    extra = manifest.assign(defect_id=np.where(manifest.label == 1, 3, -1), defect_type="x")
    report = validate_manifest(extra, roots)
    assert report["success"] and report["n_rows"] == len(manifest)
    assert all(r["success"] and r["n_failed"] == 0 for r in report["results"])
    assert len(report["results"]) >= 10
    json.dumps(report)  # JSON-serialisable
    raise_on_failure(report)


def test_empty_manifest_fails() -> None:
    report = validate_manifest(empty_manifest(), {})
    assert not report["success"]
    with pytest.raises(ManifestValidationError, match="manifest not empty"):
        raise_on_failure(report)


def _first(manifest: pd.DataFrame, label: int, split: str = "test") -> int:
    return int(manifest.index[(manifest.label == label) & (manifest.split == split)][0])


def _set(column: str, value: object, label: int = 1, split: str = "test") -> Callable:
    def corrupt(frame: pd.DataFrame, root: Path) -> str:
        row = _first(frame, label, split)
        frame.at[row, column] = value
        return frame.at[row, "image_path"]

    return corrupt


def _shrink_mask(frame: pd.DataFrame, root: Path) -> str:
    row = _first(frame, 1)
    Image.fromarray(np.full((8, 9), 255, np.uint8)).save(root / frame.at[row, "mask_path"])
    return frame.at[row, "image_path"]


def _duplicate_across_splits(frame: pd.DataFrame, root: Path) -> str:
    train, test = _first(frame, 0, "train"), _first(frame, 0, "test")
    frame.at[test, "sha256"] = frame.at[train, "sha256"]
    return frame.at[test, "image_path"]


def _retarget_image(frame: pd.DataFrame, root: Path) -> str:
    row = _first(frame, 0)
    frame.at[row, "image_path"] = "tile/test/good/missing.png"
    return "tile/test/good/missing.png"


@pytest.mark.parametrize(
    ("rule", "corrupt"),
    [
        ("label in {0, 1}", _set("label", 2)),
        ("sha256 not null or empty", _set("sha256", "")),
        ("category not null or empty", _set("category", "  ", label=0)),
        ("source not null or empty", _set("source", None, label=0, split="train")),
        ("mask iff anomalous", _set("mask_path", "", label=1)),
        ("mask iff anomalous", _set("mask_path", "tile/ground_truth/x/000_mask.png", label=0)),
        ("paths relative to the root", _set("mask_path", "/abs/000_mask.png")),
        ("source root declared", _set("source", "elsewhere", label=0)),
        ("image file exists", _retarget_image),
        ("mask file exists", _set("mask_path", "capsule/ground_truth/none/000_mask.png")),
        ("image size matches width/height", _set("width", 33, label=0)),
        ("mask size matches image size", _shrink_mask),
        ("no duplicate sha256 across splits", _duplicate_across_splits),
    ],
)
def test_each_rule_fails_on_its_fault(tmp_path: Path, rule: str, corrupt: Callable) -> None:
    root = tmp_path / "syn"
    write_tree(generate_synthetic(CONFIG, progress=False), root)
    frame = read_mvtec(root, source="syn", progress=False)
    offending = corrupt(frame, root)
    report = validate_manifest(frame, {"syn": str(root)})
    assert not report["success"]
    failed = {r["rule"]: r for r in report["results"] if not r["success"]}
    assert rule in failed and offending in failed[rule]["failed_rows"]
    with pytest.raises(ManifestValidationError) as info:
        raise_on_failure(report)
    assert f"'{rule}'" in str(info.value) and offending in str(info.value)


def test_missing_column_and_wrong_type_are_named(
    dataset: tuple[pd.DataFrame, dict[str, str]],
) -> None:
    manifest, roots = dataset
    report = validate_manifest(manifest.drop(columns=["sha256"]), roots)
    with pytest.raises(ManifestValidationError, match="required columns present.*sha256"):
        raise_on_failure(report)
    report = validate_manifest(manifest.astype({"width": "float64"}), roots)
    with pytest.raises(ManifestValidationError, match="integer columns typed.*width"):
        raise_on_failure(report)
