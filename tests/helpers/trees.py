"""Tiny dataset trees in the real on-disk layouts, written by tests: seeded random images,
box masks, and one builder per layout that several test modules share."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from helpers import REPO
from vmad_pipeline.datasets.manifest import MANIFEST_COLUMNS, file_sha256

SIZE = 8  # image side, px
TAXONOMY_YAML = REPO / "conf" / "base" / "taxonomy.yml"


def taxonomy_params() -> dict:
    """The shipped taxonomy, as the catalog's ``taxonomy`` dataset loads it."""
    return yaml.safe_load(TAXONOMY_YAML.read_text())


def write_image(path: Path, size: tuple[int, int] = (SIZE, SIZE)) -> str:
    """A random RGB image (seeded by its path); returns the path's posix string."""
    rng = np.random.default_rng(zlib.crc32(path.as_posix().encode()))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path.as_posix()


def write_mask(
    path: Path, box: tuple[int, int, int, int] = (2, 3, 4, 2), value: int = 255, size=(SIZE, SIZE)
) -> None:
    """A mask with ``value`` inside ``box`` = (x, y, w, h), 0 elsewhere."""
    x, y, w, h = box
    array = np.zeros(size, np.uint8)
    array[y : y + h, x : x + w] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def check_manifest(manifest: pd.DataFrame, root: Path, source: str) -> None:
    """What holds for every reader's rows: columns, relative posix paths, hashes, mask iff label."""
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert (manifest["source"] == source).all()
    for row in manifest.itertuples():
        for path in (row.image_path, row.mask_path):
            assert not Path(path).is_absolute() and "\\" not in path
        assert (root / row.image_path).is_file()
        assert row.sha256 == file_sha256(root / row.image_path) and len(row.sha256) == 64
        assert (row.width, row.height) == (SIZE, SIZE)
        assert row.split in ("train", "test")
        assert bool(row.mask_path) == bool(row.label) == bool(row.defect_name)
        if row.label:
            assert (root / row.mask_path).is_file() and len(row.bbox) == 4
        else:
            assert list(row.bbox) == []


def build_visa(root: Path) -> None:
    """VisA_20220922: <obj>/Data/{Images/{Normal,Anomaly},Masks/Anomaly} and split_csv/1cls.csv."""
    lines = ["object,split,label,image,mask"]
    for obj, n_normal, n_anomaly in (("candle", 3, 2), ("pcb1", 2, 1)):
        for i in range(n_normal):
            image = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / image)
            lines.append(f"{obj},{'train' if i < n_normal - 1 else 'test'},normal,{image},")
        for i in range(n_anomaly):
            image, mask = (
                f"{obj}/Data/Images/Anomaly/{i:03d}.JPG",
                f"{obj}/Data/Masks/Anomaly/{i:03d}.png",
            )
            write_image(root / image)
            write_mask(root / mask, box=(1 + i, 2, 3, 2), value=i + 1)  # small integers, not 255
            lines.append(f"{obj},test,anomaly,{image},{mask}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(lines) + "\n")


def build_btad(root: Path) -> None:
    """Product 01: bmp images, png masks; product 02: png images and masks. Stems repeat."""
    for product, ext, n_ko in (("01", "bmp", 2), ("02", "png", 1)):
        write_image(root / f"{product}/train/ok/0000.{ext}")
        write_image(root / f"{product}/train/ok/0001.{ext}")
        write_image(root / f"{product}/test/ok/0000.{ext}")
        for i in range(n_ko):
            write_image(root / f"{product}/test/ko/{i:04d}.{ext}")
            write_mask(root / f"{product}/ground_truth/ko/{i:04d}.png", box=(0, i, 8, 1))


def build_mpdd_like(
    root: Path, defect: str = "scratches", mask_name: str = "000.png", size=(SIZE, SIZE)
) -> None:
    """One class: a train and a test normal, one anomaly and its mask; ``size`` = (H, W). Trees
    that go through validation use 32 px, the suite's default ``min_side``."""
    write_image(root / "bracket_black/train/good/000.png", size=size)
    write_image(root / "bracket_black/test/good/000.png", size=size)
    write_image(root / f"bracket_black/test/{defect}/000.png", size=size)
    write_mask(root / f"bracket_black/ground_truth/{defect}/{mask_name}", size=size)


def build_bad_tree(root: Path) -> dict[str, str]:
    """An MVTec tree with one instance of each per-file rule; returns rule -> offending file."""
    build_mpdd_like(root, "hole")
    cls = root / "bracket_black"
    (cls / "train/good/001.png").write_bytes(b"not a png")
    write_image(cls / "test/hole/001.png")  # no mask
    write_mask(cls / "ground_truth/hole/009.png")  # no image
    write_image(cls / "test/hole/002.png")
    write_mask(cls / "ground_truth/hole/002.png", size=(8, 5))  # 5 wide
    write_image(cls / "test/hole/003.png")
    (cls / "ground_truth/hole/003.png").write_bytes(b"not a mask")
    return {
        "unreadable_image": "bracket_black/train/good/001.png",
        "image_without_mask": "bracket_black/test/hole/001.png",
        "mask_without_image": "bracket_black/ground_truth/hole/009.png",
        "mask_size": "bracket_black/ground_truth/hole/002.png",
        "unreadable_mask": "bracket_black/ground_truth/hole/003.png",
    }


def build_vision(root: Path) -> None:
    """<Category>/{train,val,inference}/ with Roboflow's _annotations.coco.json beside the images."""
    console = root / "Console/train"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(console / name, size=(6, 8))  # (H, W): 8 wide, 6 high
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
    write_image(val / "d.jpg", size=(6, 8))
    (val / "_annotations.coco.json").write_text(
        json.dumps(
            {
                **doc,
                "images": [{"id": 5, "file_name": "d.jpg", "width": 8, "height": 6}],
                "annotations": [],
            }
        )
    )
    write_image(root / "Console/inference/e.jpg", size=(6, 8))  # unlabelled: never read


TREE_SPECS = [  # (name, label, defect_id, defect_type, mask box (y0, y1, x0, x1))
    ("good_0", 0, -1, "", None),
    ("good_1", 0, -1, "", None),
    ("scratch_0", 1, 0, "scratch", (1, 4, 1, 6)),  # top left
    ("stain_0", 1, 3, "stain", (10, 15, 10, 15)),  # bottom right
    ("odd_0", 1, -1, "weird", (6, 10, 6, 10)),  # centre, unknown type
]


def write_widget_tree(root: Path, specs=TREE_SPECS) -> pd.DataFrame:
    """A 16 px `widget` class in MVTec layout (random images, box masks) and its manifest rows;
    shared by the annotation, LLM backend and annotate pipeline tests."""
    rows = []
    rng = np.random.default_rng(0)
    for name, label, defect_id, defect_type, box in specs:
        img = root / "widget" / "test" / f"{name}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(img)
        mask_path = ""
        if box is not None:
            m = np.zeros((16, 16), dtype=np.uint8)
            m[box[0] : box[1], box[2] : box[3]] = 255
            mp = root / "widget" / "ground_truth" / f"{name}_mask.png"
            mp.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).save(mp)
            mask_path = mp.relative_to(root).as_posix()
        rows.append(
            {
                "source": "synthetic",
                "category": "widget",
                "image_path": img.relative_to(root).as_posix(),
                "mask_path": mask_path,
                "label": label,
                "defect_id": defect_id,
                "defect_type": defect_type,
                "width": 16,
                "height": 16,
                "split": "test",
                "sha256": f"{name}-hash",
            }
        )
    return pd.DataFrame(rows)


def split_manifest(classes_by_source: dict[str, list[str]]) -> pd.DataFrame:
    """Manifest rows for the split tests (no files): per class, two train-folder normals, one
    test normal, one test anomaly; unique hashes."""
    rows = []
    for source, classes in classes_by_source.items():
        for c in classes:
            for i, (split, label) in enumerate(
                [("train", 0), ("train", 0), ("test", 0), ("test", 1)]
            ):
                path = f"{c}/{split}/{i}.png"
                rows.append(
                    {
                        "source": source,
                        "category": c,
                        "image_path": path,
                        "split": split,
                        "label": label,
                        "sha256": f"{source}/{path}",
                    }
                )
    return pd.DataFrame(rows)
