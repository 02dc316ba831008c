"""The COCO readers: VISION (Roboflow exports, one JSON per folder) and a generic COCO source,
their polygons and RLEs rasterised to masks, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.sources import read_source
from helpers.trees import build_vision, write_image
from PIL import Image

from vmad_pipeline.datasets.manifest import IngestError, mask_file


def test_vision_polygons_to_mask_pixels(tmp_path: Path) -> None:
    build_vision(tmp_path / "vision")
    masks = tmp_path / "masks/vision"
    manifest = read_source("vision", tmp_path / "vision", masks_dir=tmp_path / "masks")
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
        read_source("vision", root, masks_dir=tmp_path / "m")
    bad = {**good, "images": [{**good["images"][0], "width": 9}] + good["images"][1:]}
    path.write_text(json.dumps(bad))
    with pytest.raises(
        IngestError,
        match=r"\[mask_size\] annotation of Console/train/a\..*\.png is 9x6 but image Console/train/a.jpg is 8x6",
    ):
        read_source("vision", root, masks_dir=tmp_path / "m")
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
        read_source("vision", root, masks_dir=tmp_path / "m")


def test_generic_coco_with_rle(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    for name in ("phone/x.png", "phone/y.png"):
        write_image(root / "images" / name, size=(4, 3))  # 3 wide, 4 high
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
    manifest = read_source("coco", root, source="msd", masks_dir=tmp_path / "m")
    x = manifest.set_index("image_path").loc["images/phone/x.png"]
    assert (x["category"], x["defect_name"], x["bbox"], x["split"]) == (
        "phone",
        "crack",
        [1, 1, 1, 2],
        "test",
    )
    pixels = np.asarray(Image.open(tmp_path / "m/msd" / x["mask_path"]))
    assert pixels[1, 1] == pixels[2, 1] == 255 and int(pixels.sum()) == 2 * 255
    doc["annotations"][0]["segmentation"]["counts"] = "PPYo0"  # compressed RLE
    (root / "annotations/instances.json").write_text(json.dumps(doc))
    with pytest.raises(IngestError, match="compressed RLE"):
        read_source("coco", root, masks_dir=tmp_path / "m")
