"""Ingestion: the new readers (VISION, COCO, MVTec-layout variants through the registry), the
per-source taxonomy, the incremental cache, and every bad-input rule in raise and quarantine mode,
on tiny trees in the real layouts."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.test_readers import _check_manifest, _image, _mask, build_btad, build_visa
from vmad_pipeline.annotation.taxonomy import Taxonomy
from vmad_pipeline.configs import ConfigError
from vmad_pipeline.datasets.coco import read_coco
from vmad_pipeline.datasets.manifest import IngestError, mask_file
from vmad_pipeline.datasets.mvtec import list_mvtec
from vmad_pipeline.datasets.registry import FORMATS
from vmad_pipeline.datasets.scan import FileCache, scan
from vmad_pipeline.datasets.vision import list_vision, read_vision
from vmad_pipeline.pipelines.ingest.nodes import (
    apply_taxonomy,
    map_defects,
    read_sources,
    source_roots,
)

REPO = Path(__file__).resolve().parents[1]
TAXONOMY = yaml.safe_load((REPO / "conf/base/taxonomy.yml").read_text())

# --------------------------------------------------------------------------------------- VISION


def build_vision(root: Path) -> None:
    """<Category>/{train,val,inference}/ with Roboflow's _annotations.coco.json beside the images."""
    console = root / "Console/train"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _image(console / name, size=(6, 8))  # (H, W): 8 wide, 6 high
    doc = {
        "info": {"description": "VISION Console"},
        "categories": [
            {"id": 0, "name": "console", "supercategory": "none"},
            {"id": 1, "name": "Scratch", "supercategory": "console"},
            {"id": 2, "name": "Dirty", "supercategory": "console"},
        ],
        "images": [
            {"id": 0, "file_name": "a.jpg", "width": 8, "height": 6},
            {"id": 1, "file_name": "b.jpg", "width": 8, "height": 6},
            {"id": 2, "file_name": "c.jpg", "width": 8, "height": 6},
        ],
        "annotations": [
            # a 4x3 rectangle: columns 2..5, rows 1..3 (outline included)
            {
                "id": 0,
                "image_id": 0,
                "category_id": 1,
                "segmentation": [[2, 1, 5, 1, 5, 3, 2, 3]],
                "area": 6,
                "bbox": [2, 1, 3, 2],
                "iscrowd": 0,
            },
            # b: a small Dirty triangle and a larger Scratch one: the larger names the defect
            {
                "id": 1,
                "image_id": 1,
                "category_id": 2,
                "segmentation": [[0, 0, 1, 0, 0, 1]],
                "area": 0.5,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[7, 5, 7, 2, 4, 5]],
                "area": 4.5,
                "iscrowd": 0,
            },
        ],
    }
    (console / "_annotations.coco.json").write_text(json.dumps(doc))
    val = root / "Console/val"
    _image(val / "d.jpg", size=(6, 8))
    (val / "_annotations.coco.json").write_text(
        json.dumps(
            {
                **doc,
                "images": [{"id": 5, "file_name": "d.jpg", "width": 8, "height": 6}],
                "annotations": [],
            }
        )
    )
    _image(root / "Console/inference/e.jpg", size=(6, 8))  # unlabelled: never read


def test_vision_polygons_to_mask_pixels(tmp_path: Path) -> None:
    build_vision(tmp_path / "vision")
    masks = tmp_path / "masks/vision"
    manifest = read_vision(tmp_path / "vision", mask_root=masks, progress=False)
    rows = manifest.set_index("image_path")
    assert sorted(rows.index) == [
        "Console/train/a.jpg",
        "Console/train/b.jpg",
        "Console/train/c.jpg",
        "Console/val/d.jpg",
    ]  # no inference/
    a = rows.loc["Console/train/a.jpg"]
    assert (a["label"], a["defect_name"], a["split"], a["category"]) == (
        1,
        "Scratch",
        "train",
        "Console",
    )
    assert a["mask_path"].startswith("Console/train/a.") and a["mask_path"].endswith(".png")
    pixels = np.asarray(
        Image.open(mask_file({"vision": "x", "vision:masks": str(masks)}, "vision", a["mask_path"]))
    )
    expected = np.zeros((6, 8), np.uint8)
    expected[1:4, 2:6] = 255  # rows 1..3, columns 2..5, by hand
    assert np.array_equal(pixels, expected) and a["bbox"] == [2, 1, 4, 3]
    b = rows.loc["Console/train/b.jpg"]
    assert b["defect_name"] == "Scratch"  # area 4.5 beats Dirty's 0.5
    b_pixels = np.asarray(Image.open(masks / b["mask_path"]))
    assert b_pixels[0, 0] == 255 and b_pixels[5, 7] == 255 and b_pixels[2, 7] == 255
    assert b_pixels[3, 0] == 0 and set(np.unique(b_pixels)) == {0, 255}
    assert rows.loc["Console/train/c.jpg", "label"] == 0
    assert rows.loc["Console/val/d.jpg", "split"] == "test"
    assert not list(masks.rglob(".*"))  # no temporary files left


def test_vision_bad_inputs(tmp_path: Path) -> None:
    root = tmp_path / "vision"
    build_vision(root)
    path = root / "Console/train/_annotations.coco.json"
    good = json.loads(path.read_text())
    path.write_text(json.dumps(good)[:-4])
    with pytest.raises(
        IngestError, match=r"\[malformed_metadata\] malformed JSON Console/train/_annotations"
    ):
        read_vision(root, mask_root=tmp_path / "m", progress=False)
    bad = {**good, "images": [{**good["images"][0], "width": 9}] + good["images"][1:]}
    path.write_text(json.dumps(bad))
    with pytest.raises(
        IngestError,
        match=r"\[mask_size\] annotation of Console/train/a\..*\.png is 9x6 but image Console/train/a.jpg is 8x6",
    ):
        read_vision(root, mask_root=tmp_path / "m", progress=False)
    bad = {
        **good,
        "annotations": [
            *good["annotations"],
            {"id": 9, "image_id": 2, "category_id": 7, "segmentation": []},
        ],
    }
    path.write_text(json.dumps(bad))
    with pytest.raises(
        IngestError, match=r"annotations\[3\] has unknown category_id 7 \(Console/train/c.jpg\)"
    ):
        read_vision(root, mask_root=tmp_path / "m", progress=False)


# ----------------------------------------------------------------------------------------- COCO


def test_generic_coco_with_rle(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    for name in ("phone/x.png", "phone/y.png"):
        _image(root / "images" / name, size=(4, 3))  # 3 wide, 4 high
    # uncompressed RLE, column-major over a 4x3 mask: 5 zeros, 2 ones (column 1, rows 1-2), 5 zeros
    doc = {
        "images": [
            {"id": 1, "file_name": "phone/x.png", "width": 3, "height": 4},
            {"id": 2, "file_name": "phone/y.png", "width": 3, "height": 4},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 3,
                "segmentation": {"counts": [5, 2, 5], "size": [4, 3]},
                "iscrowd": 1,
            }
        ],
        "categories": [{"id": 3, "name": "crack"}],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/instances.json").write_text(json.dumps(doc))
    manifest = read_coco(root, mask_root=tmp_path / "m", source="msd", progress=False)
    x = manifest.set_index("image_path").loc["images/phone/x.png"]
    assert (x["category"], x["defect_name"], x["bbox"], x["split"]) == (
        "phone",
        "crack",
        [1, 1, 1, 2],
        "test",
    )
    pixels = np.asarray(Image.open(tmp_path / "m" / x["mask_path"]))
    assert pixels[1, 1] == pixels[2, 1] == 255 and int(pixels.sum()) == 2 * 255
    doc["annotations"][0]["segmentation"]["counts"] = "PPYo0"  # compressed RLE
    (root / "annotations/instances.json").write_text(json.dumps(doc))
    with pytest.raises(IngestError, match="compressed RLE"):
        read_coco(root, mask_root=tmp_path / "m", progress=False)


# ------------------------------------------------------------------ MVTec-layout variants, registry


def build_mpdd_like(root: Path, defect: str = "scratches", mask_name: str = "000.png") -> None:
    _image(root / "bracket_black/train/good/000.png")
    _image(root / "bracket_black/test/good/000.png")
    _image(root / f"bracket_black/test/{defect}/000.png")
    _mask(root / f"bracket_black/ground_truth/{defect}/{mask_name}")


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
    _check_manifest(raw, tmp_path / fmt, fmt)
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


def test_source_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.sources\[0\]\.format.*'nosuch'.*vision"):
        source_roots([{"name": "a", "format": "nosuch", "root": "/x"}], "/syn")
    with pytest.raises(
        ConfigError, match=r"unknown option\(s\) \['resolution'\].*allowed: categories"
    ):
        source_roots([{"name": "a", "format": "mvtec", "root": "/x", "resolution": 256}], "/syn")


# ------------------------------------------------------------------------------------ taxonomy


def test_taxonomy_maps_every_dataset_and_the_synthetic_names() -> None:
    from vmad_pipeline.datasets.synthetic import SyntheticConfig, class_defects

    tax = Taxonomy.from_dict(TAXONOMY)
    assert tax.resolve("broken_large", "mvtec")[1].name == "broken"
    assert tax.resolve("thread", "mvtec")[1].name == "foreign_object"
    assert tax.resolve("thread", "mvtec3d")[1].name == "broken"  # same word, other dataset
    assert tax.resolve("ZW", "realiad")[1].name == "contamination"
    assert tax.resolve("ko", "btad") == (True, None)
    assert tax.resolve("wobbly", "mvtec") == (False, None)
    cfg = SyntheticConfig()
    for cls in cfg.classes:
        for name in class_defects(cfg, cls):
            assert tax.resolve(name, "mvtec")[0], name
    with pytest.raises(ValueError, match=r"sources.x.foo: 'nosuch' is not a defect type"):
        Taxonomy.from_dict({**TAXONOMY, "sources": {"x": {"foo": "nosuch"}}})


def test_unknown_defect_names_are_reported_then_mapped(tmp_path: Path) -> None:
    build_mpdd_like(tmp_path / "m", "wobbly")
    _image(tmp_path / "m/bracket_black/test/wobbly/001.png")
    _mask(tmp_path / "m/bracket_black/ground_truth/wobbly/001.png")
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


# -------------------------------------------------------------------------------- incremental


class _OpenCounter:
    """Counts files opened in this process (``open`` audit events) under a folder.

    Audit hooks cannot be removed; the hook is idle unless ``watch`` is set."""

    watch: str | None = None
    opened: list[str] = []

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.watch and event == "open" and isinstance(args[0], str | Path):
            path = str(args[0])
            if path.startswith(cls.watch):
                cls.opened.append(path)


sys.addaudithook(_OpenCounter.hook)


def _count_opens(root: Path, fn):
    _OpenCounter.watch, _OpenCounter.opened = str(root), []
    try:
        return fn(), list(_OpenCounter.opened)
    finally:
        _OpenCounter.watch = None


def test_rerun_reads_no_unchanged_file(tmp_path: Path) -> None:
    inputs = tmp_path / "in"  # every image, mask and written mask; the cache lives outside
    build_mpdd_like(inputs / "m", "hole")
    build_vision(inputs / "vision")
    cache_path = tmp_path / "cache.parquet"

    def listings() -> list:
        return [
            list_mvtec(inputs / "m", source="m"),
            list_vision(inputs / "vision", source="vis", mask_root=inputs / "masks"),
        ]

    def run_and_save():
        cache = FileCache(cache_path)
        out = scan(listings(), cache=cache, workers=2, parallel="thread", progress=False)
        cache.save()
        return out

    def read(opened: list[str]) -> list[str]:
        return [p for p in opened if not p.endswith(".json")]  # COCO JSONs list the items

    (cold, problems), opened = _count_opens(inputs, run_and_save)
    assert problems == [] and len(cold) == 7
    assert any(p.endswith("000.png") for p in opened) and any(p.endswith("a.jpg") for p in opened)
    (warm, problems), opened = _count_opens(inputs, run_and_save)
    assert read(opened) == [] and problems == [] and warm.equals(cold)
    # A rewritten file (new mtime) is read again, and only it.
    touched = inputs / "m/bracket_black/test/good/000.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(touched)
    (third, _), opened = _count_opens(inputs, run_and_save)
    assert read(opened) == [str(touched)]
    by_path = third.set_index("image_path")["sha256"]
    assert (
        by_path["bracket_black/test/good/000.png"]
        != cold.set_index("image_path").loc["bracket_black/test/good/000.png", "sha256"]
    )
    # The check is sound: without the cache the same scan opens every image and mask again.
    _, opened = _count_opens(inputs, lambda: scan(listings(), progress=False))
    assert len(read(opened)) >= 7


def test_process_pool_gives_the_same_rows(tmp_path: Path) -> None:
    root = tmp_path / "m"
    for i in range(40):  # more than one batch
        _image(root / f"c/train/good/{i:03d}.png")
    serial, _ = scan([list_mvtec(root)], progress=False)
    pooled, _ = scan([list_mvtec(root)], workers=2, parallel="process", progress=False)
    decoded, _ = scan([list_mvtec(root)], workers=2, image_check="decode", progress=False)
    assert serial.equals(pooled) and serial.equals(decoded)


# ------------------------------------------------------------------------------- bad input


def build_bad_tree(root: Path) -> dict[str, str]:
    """An MVTec tree with one instance of each per-file rule; returns rule -> offending file."""
    build_mpdd_like(root, "hole")
    cls = root / "bracket_black"
    (cls / "train/good/001.png").write_bytes(b"not a png")
    _image(cls / "test/hole/001.png")  # no mask
    _mask(cls / "ground_truth/hole/009.png")  # no image
    _image(cls / "test/hole/002.png")
    _mask(cls / "ground_truth/hole/002.png", size=(8, 5))  # 5 wide
    _image(cls / "test/hole/003.png")
    (cls / "ground_truth/hole/003.png").write_bytes(b"not a mask")
    return {
        "unreadable_image": "bracket_black/train/good/001.png",
        "image_without_mask": "bracket_black/test/hole/001.png",
        "mask_without_image": "bracket_black/ground_truth/hole/009.png",
        "mask_size": "bracket_black/ground_truth/hole/002.png",
        "unreadable_mask": "bracket_black/ground_truth/hole/003.png",
    }


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
