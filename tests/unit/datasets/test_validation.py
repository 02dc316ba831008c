"""Great Expectations validation of the manifest: a good manifest passes, each rule catches its fault."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.configs.ingest import SyntheticConfig
from vmad_pipeline.datasets.listing import RULES
from vmad_pipeline.datasets.manifest import empty_manifest
from vmad_pipeline.datasets.mvtec import read_mvtec
from vmad_pipeline.datasets.synthetic import generate_synthetic, write_tree
from vmad_pipeline.datasets.validation import (
    ManifestValidationError,
    raise_on_failure,
    run_validation,
    validate_manifest,
)
from vmad_pipeline.datasets.validation.quarantine import ROW_RULES

CONFIG = SyntheticConfig(
    classes=("tile", "capsule"),
    image_size=32,
    n_train_good=2,
    n_test_good=1,
    n_test_defect=1,
    defects_per_class=1,
)
QUIET = {"progress": False}


def _tree(root: Path, seed: int = 0) -> Path:
    config = SyntheticConfig(**{**CONFIG.__dict__, "seed": seed})
    write_tree(generate_synthetic(config, progress=False), root)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict[str, str]]:
    root = _tree(tmp_path_factory.mktemp("val") / "syn")
    return read_mvtec(root, source="syn", progress=False), {"syn": str(root)}


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict[str, str]]:
    base = tmp_path_factory.mktemp("two")
    a, b = _tree(base / "a", seed=0), _tree(base / "b", seed=1)
    frame = pd.concat(
        [read_mvtec(a, source="a", progress=False), read_mvtec(b, source="b", progress=False)],
        ignore_index=True,
    )
    return frame, {"a": str(a), "b": str(b)}


def test_good_manifest_passes_with_extra_columns(
    dataset: tuple[pd.DataFrame, dict[str, str]],
) -> None:
    manifest, roots = dataset
    extra = manifest.assign(defect_id=np.where(manifest.label == 1, 3, -1), defect_type="x")
    report = validate_manifest(extra, roots, QUIET)
    assert report["success"] and report["n_rows"] == len(manifest)
    assert all(r["success"] and r["n_failed"] == 0 for r in report["results"])
    assert len(report["results"]) >= 20
    json.dumps(report)  # JSON-serialisable
    raise_on_failure(report)


def test_per_source_counts_in_the_report(two_sources: tuple[pd.DataFrame, dict[str, str]]) -> None:
    manifest, roots = two_sources
    report = validate_manifest(manifest, roots, QUIET)
    assert report["success"], [r for r in report["results"] if not r["success"]]
    # per class: 2 train normals, 1 test normal, 1 test anomaly; two classes per source
    counts = {"images": 8, "anomalous": 2, "anomalous_test": 2, "train": 4, "test": 4, "classes": 2}
    for source in ("a", "b"):
        assert report["sources"][source] == {**counts, "success": True, "failed_rules": {}}


def test_empty_manifest_fails() -> None:
    report = validate_manifest(empty_manifest(), {}, QUIET)
    assert not report["success"]
    with pytest.raises(ManifestValidationError, match="manifest not empty"):
        raise_on_failure(report)


def test_masks_under_a_declared_mask_root(tmp_path: Path) -> None:
    """A source may keep its masks in another tree, declared as ``<source>:masks``."""
    root = _tree(tmp_path / "syn")
    frame = read_mvtec(root, source="syn", progress=False)
    masks = tmp_path / "masks"
    for rel in frame.loc[frame.label == 1, "mask_path"]:
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / rel, masks / rel)
    assert not validate_manifest(frame, {"syn": str(root)}, QUIET)["success"]
    report = validate_manifest(frame, {"syn": str(root), "syn:masks": str(masks)}, QUIET)
    assert report["success"] and list(report["sources"]) == ["syn"]


def test_graded_masks_pass_the_threshold_rule_and_fail_the_binary_one(tmp_path: Path) -> None:
    """VisA-style masks (small integers) are positive where > 0; `binary` refuses them."""
    root = _tree(tmp_path / "syn")
    frame = read_mvtec(root, source="syn", progress=False)
    row = _first(frame, 1)
    path = root / frame.at[row, "mask_path"]
    mask = np.asarray(Image.open(path))
    Image.fromarray(np.where(mask > 0, 2, 0).astype(np.uint8)).save(path)
    roots = {"syn": str(root)}
    assert validate_manifest(frame, roots, QUIET)["success"]
    report = validate_manifest(frame, roots, {**QUIET, "mask_values": "binary"})
    failed = {r["rule"]: r for r in report["results"] if not r["success"]}
    assert list(failed) == ["mask values in {0, 1} or {0, 255}"]
    assert failed["mask values in {0, 1} or {0, 255}"]["failed_rows"] == [
        f"syn:{frame.at[row, 'image_path']}"
    ]
    # a 0/1 mask is binary
    Image.fromarray((mask > 0).astype(np.uint8)).save(path)
    assert validate_manifest(frame, roots, {**QUIET, "mask_values": "binary"})["success"]


def _first(manifest: pd.DataFrame, label: int, split: str = "test") -> int:
    return int(manifest.index[(manifest.label == label) & (manifest.split == split)][0])


def _name(frame: pd.DataFrame, row: int) -> str:
    source = frame.at[row, "source"]
    return f"{'' if pd.isna(source) else source}:{frame.at[row, 'image_path']}"


def _set(column: str, value: object, label: int = 1, split: str = "test") -> Callable:
    def corrupt(frame: pd.DataFrame, root: Path) -> str:
        row = _first(frame, label, split)
        frame.at[row, column] = value
        return _name(frame, row)

    return corrupt


def _write_mask(array: np.ndarray) -> Callable:
    def corrupt(frame: pd.DataFrame, root: Path) -> str:
        row = _first(frame, 1)
        Image.fromarray(array).save(root / frame.at[row, "mask_path"])
        return _name(frame, row)

    return corrupt


def _garbage_mask(frame: pd.DataFrame, root: Path) -> str:
    row = _first(frame, 1)
    (root / frame.at[row, "mask_path"]).write_bytes(b"not a png")
    return _name(frame, row)


def _duplicate_across_splits(frame: pd.DataFrame, root: Path) -> str:
    train, test = _first(frame, 0, "train"), _first(frame, 0, "test")
    frame.at[test, "sha256"] = frame.at[train, "sha256"]
    return _name(frame, test)


def _retarget_image(frame: pd.DataFrame, root: Path) -> str:
    row = _first(frame, 0)
    frame.at[row, "image_path"] = "tile/test/good/missing.png"
    return "syn:tile/test/good/missing.png"


def _shift_bbox(frame: pd.DataFrame, root: Path) -> str:
    row = _first(frame, 1)
    x, y, w, h = frame.at[row, "bbox"]
    frame.at[row, "bbox"] = [x + 1, y, w, h]
    return _name(frame, row)


@pytest.mark.parametrize(
    ("rule", "corrupt", "params"),
    [
        ("label in {0, 1}", _set("label", 2), {}),
        ("sha256 not null or empty", _set("sha256", ""), {}),
        ("category not null or empty", _set("category", "  ", label=0), {}),
        ("source not null or empty", _set("source", None, label=0, split="train"), {}),
        ("mask iff anomalous", _set("mask_path", "", label=1), {}),
        ("mask iff anomalous", _set("mask_path", "tile/ground_truth/x/000_mask.png", label=0), {}),
        ("paths relative to the root", _set("mask_path", "/abs/000_mask.png"), {}),
        ("source root declared", _set("source", "elsewhere", label=0), {}),
        ("image file exists", _retarget_image, {}),
        ("mask file exists", _set("mask_path", "capsule/ground_truth/none/000_mask.png"), {}),
        ("image size matches width/height", _set("width", 33, label=0), {}),
        ("width/height within limits", _set("height", 0, label=0), {}),
        ("width/height within limits", lambda f, r: _name(f, 0), {"min_side": 33}),
        ("width/height within limits", lambda f, r: _name(f, 0), {"min_side": 16, "max_side": 31}),
        ("mask size matches image size", _write_mask(np.full((8, 9), 255, np.uint8)), {}),
        ("mask size matches image size", _garbage_mask, {}),
        ("mask has a positive pixel (> 0)", _write_mask(np.zeros((32, 32), np.uint8)), {}),
        ("bbox matches the mask (> 0)", _shift_bbox, {}),
        ("bbox matches the mask (> 0)", _set("bbox", [0, 0, 1, 1], label=0), {}),
        (
            "mask values in {0, 1} or {0, 255}",
            _write_mask(np.array([[0, 128], [255, 0]], np.uint8).repeat(16, 0).repeat(16, 1)),
            {"mask_values": "binary"},
        ),
        ("no duplicate sha256 across splits", _duplicate_across_splits, {}),
    ],
)
def test_each_rule_fails_on_its_fault(
    tmp_path: Path, rule: str, corrupt: Callable, params: dict
) -> None:
    root = _tree(tmp_path / "syn")
    frame = read_mvtec(root, source="syn", progress=False)
    offending = corrupt(frame, root)
    report = validate_manifest(frame, {"syn": str(root)}, {**QUIET, **params})
    assert not report["success"]
    failed = {r["rule"]: r for r in report["results"] if not r["success"]}
    assert rule in failed and offending in failed[rule]["failed_rows"]
    with pytest.raises(ManifestValidationError) as info:
        raise_on_failure(report)
    assert f"'{rule}'" in str(info.value) and offending in str(info.value)
    if offending.startswith("syn:"):
        assert rule in report["sources"]["syn"]["failed_rules"]
        assert not report["sources"]["syn"]["success"]


def test_duplicate_across_sources(two_sources: tuple[pd.DataFrame, dict[str, str]]) -> None:
    manifest, roots = two_sources
    frame = manifest.copy()
    a_row = int(frame.index[frame.source == "a"][0])
    b_row = int(frame.index[frame.source == "b"][3])
    frame.at[b_row, "sha256"] = frame.at[a_row, "sha256"]
    report = validate_manifest(frame, roots, QUIET)
    failed = {r["rule"]: r for r in report["results"] if not r["success"]}
    assert list(failed) == ["no duplicate sha256 across sources"]
    assert set(failed["no duplicate sha256 across sources"]["failed_rows"]) == {
        _name(frame, a_row),
        _name(frame, b_row),
    }
    assert report["sources"]["a"]["failed_rules"] == {"no duplicate sha256 across sources": 1}


def test_source_without_rows_or_without_test_anomalies(
    two_sources: tuple[pd.DataFrame, dict[str, str]], tmp_path: Path
) -> None:
    manifest, roots = two_sources
    report = validate_manifest(manifest, {**roots, "empty": str(tmp_path)}, QUIET)
    failed = {r["rule"]: r for r in report["results"] if not r["success"]}
    assert list(failed) == ["source has images", "source has anomalous test images"]
    assert failed["source has images"]["failed_rows"] == ["empty"]
    assert report["sources"]["empty"]["images"] == 0 and not report["sources"]["empty"]["success"]
    assert report["sources"]["a"]["success"]
    with pytest.raises(ManifestValidationError, match="'source has images'.*empty"):
        raise_on_failure(report)

    normal_b = manifest[(manifest.source == "a") | (manifest.label == 0)]
    report = validate_manifest(normal_b.reset_index(drop=True), roots, QUIET)
    failed = {r["rule"]: r for r in report["results"] if not r["success"]}
    assert list(failed) == ["source has anomalous test images"]
    assert failed["source has anomalous test images"]["failed_rows"] == ["b"]
    assert report["sources"]["b"]["anomalous_test"] == 0


def test_missing_column_and_wrong_type_are_named(
    dataset: tuple[pd.DataFrame, dict[str, str]],
) -> None:
    manifest, roots = dataset
    report = validate_manifest(manifest.drop(columns=["sha256"]), roots, QUIET)
    with pytest.raises(ManifestValidationError, match="required columns present.*sha256"):
        raise_on_failure(report)
    report = validate_manifest(manifest.astype({"width": "float64"}), roots, QUIET)
    with pytest.raises(ManifestValidationError, match="integer columns typed.*width"):
        raise_on_failure(report)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_side": 0}, "min_side"),
        ({"min_side": 10, "max_side": 5}, "max_side"),
        ({"mask_values": "soft"}, "mask_values"),
        ({"workers": 0}, "workers"),
        ({"max_size": 5}, r"ingest\.validation\.max_size: unknown parameter"),
    ],
)
def test_bad_parameters_are_named(
    dataset: tuple[pd.DataFrame, dict[str, str]], params: dict, message: str
) -> None:
    manifest, roots = dataset
    with pytest.raises(ConfigError, match=message):
        validate_manifest(manifest, roots, params)


def test_every_row_rule_has_a_quarantine_rule_id(
    dataset: tuple[pd.DataFrame, dict[str, str]],
) -> None:
    """ingest.on_error: quarantine can leave out a row for any row rule the suite has."""
    manifest, roots = dataset
    _, checks = run_validation(manifest, roots, {**QUIET, "mask_values": "binary"})
    assert set(checks) == set(ROW_RULES)
    assert {rule_id for rule_id, _ in ROW_RULES.values()} <= set(RULES)


def test_an_inverted_mask_is_named_and_quarantined_not_taken_as_a_whole_image_defect(
    tmp_path: Path,
) -> None:
    """A mask saved the other way round (0 = defect) covers nearly the whole image and was once
    accepted as one huge defect: its share of the image is now a rule."""
    root = _tree(tmp_path / "syn")
    frame = read_mvtec(root, source="syn", progress=False)
    row = _first(frame, 1)
    path = root / frame.at[row, "mask_path"]
    mask = np.asarray(Image.open(path)) > 0
    Image.fromarray(np.where(mask, 0, 255).astype(np.uint8)).save(path)  # inverted
    roots = {"syn": str(root)}
    report = validate_manifest(frame, roots, QUIET)
    failed = {r["rule"]: r for r in report["results"] if not r["success"]}
    rule = "mask covers at most max_mask_fraction of the image (not inverted)"
    assert rule in failed and failed[rule]["failed_rows"] == [f"syn:{frame.at[row, 'image_path']}"]
    allowed = validate_manifest(frame, roots, {**QUIET, "max_mask_fraction": 1.0})
    assert rule not in {r["rule"] for r in allowed["results"] if not r["success"]}
    with pytest.raises(ConfigError, match="max_mask_fraction"):
        validate_manifest(frame, roots, {**QUIET, "max_mask_fraction": 0})
