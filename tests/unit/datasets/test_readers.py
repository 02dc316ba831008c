"""The dataset readers (VisA, BTAD, Real-IAD, MVTec 3D-AD, folder, MMAD) on tiny trees in the real
layouts: 8x8 images, real file naming, and one bad input per rule."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from helpers.sources import read_source
from helpers.trees import (
    build_btad,
    build_visa,
    check_manifest,
    write_image,
    write_mask,
)

from vmad_pipeline.datasets.listing import Item, Problem
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.mmad import MMAD_COLUMNS, read_mmad
from vmad_pipeline.datasets.realiad import camera_view
from vmad_pipeline.datasets.registry import list_source


def _by_path(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest.set_index("image_path")


# ----------------------------------------------------------------------------------------- VisA


def test_visa_raw(tmp_path: Path) -> None:
    build_visa(tmp_path)
    manifest = read_source("visa", tmp_path)
    check_manifest(manifest, tmp_path, "visa")
    assert len(manifest) == 8 and set(manifest["category"]) == {"candle", "pcb1"}
    candle = manifest[manifest["category"] == "candle"]
    assert (candle["split"] == "train").sum() == 2 and (candle["split"] == "test").sum() == 3
    rows = _by_path(manifest)
    anomaly = rows.loc["candle/Data/Images/Anomaly/001.JPG"]
    assert anomaly["mask_path"] == "candle/Data/Masks/Anomaly/001.png"
    assert (anomaly["label"], anomaly["defect_name"], anomaly["bbox"]) == (
        1,
        "anomaly",
        [2, 2, 3, 2],
    )
    assert rows.loc["pcb1/Data/Images/Normal/0001.JPG", "split"] == "test"
    assert rows.loc["pcb1/Data/Images/Normal/0000.JPG", "label"] == 0
    assert (manifest["view"] == "").all()


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda csv: csv.replace("object,split", "obj,split"), "split_csv/1cls.csv: header"),
        (lambda csv: csv.replace(",normal,pcb1/", ",normal,extra,pcb1/"), "line 7"),
        (lambda csv: csv.replace("test,anomaly", "test,bad"), "label 'bad'"),
        (
            lambda csv: csv.replace(",candle/Data/Masks/Anomaly/001.png", ","),
            "candle/Data/Images/Anomaly/001.JPG) is anomalous but has no mask",
        ),
    ],
)
def test_visa_malformed_csv_names_file_and_rule(
    tmp_path: Path, corrupt: Callable[[str], str], expected: str
) -> None:
    build_visa(tmp_path)
    path = tmp_path / "split_csv/1cls.csv"
    path.write_text(corrupt(path.read_text()))
    with pytest.raises(IngestError, match=re.escape(expected)):
        read_source("visa", tmp_path)


def test_visa_orphan_and_wrong_size_masks(tmp_path: Path) -> None:
    build_visa(tmp_path)
    write_mask(tmp_path / "pcb1/Data/Masks/Anomaly/007.png")
    with pytest.raises(IngestError, match="mask pcb1/Data/Masks/Anomaly/007.png .* has no image"):
        read_source("visa", tmp_path)
    (tmp_path / "pcb1/Data/Masks/Anomaly/007.png").unlink()
    write_mask(tmp_path / "candle/Data/Masks/Anomaly/000.png", size=(4, 6), value=1)
    with pytest.raises(IngestError, match="Masks/Anomaly/000.png is 6x4 .*Anomaly/000.JPG is 8x8"):
        read_source("visa", tmp_path)


def build_visa_1cls(root: Path) -> None:
    """VisA_pytorch/1cls/<obj>/{train/good,test/{good,bad},ground_truth/bad} (prepare_data.py)."""
    base = root / "1cls/candle"
    for image in ("train/good/0000.JPG", "train/good/0001.JPG", "test/good/0002.JPG"):
        write_image(base / image)
    write_image(base / "test/bad/000.JPG")
    write_mask(base / "ground_truth/bad/000.png")


def test_visa_1cls(tmp_path: Path) -> None:
    build_visa_1cls(tmp_path)
    manifest = read_source("visa_1cls", tmp_path, source="visa")
    check_manifest(manifest, tmp_path, "visa")
    assert len(manifest) == 4 and manifest["image_path"].str.startswith("1cls/candle/").all()
    bad = _by_path(manifest).loc["1cls/candle/test/bad/000.JPG"]
    assert (bad["mask_path"], bad["defect_name"]) == (
        "1cls/candle/ground_truth/bad/000.png",
        "anomaly",
    )
    assert bad["bbox"] == [2, 3, 4, 2] and bad["split"] == "test"
    inner = read_source("visa_1cls", tmp_path / "1cls", source="visa")  # 1cls/ as the root
    assert list(inner["image_path"]) == [p.removeprefix("1cls/") for p in manifest["image_path"]]
    write_mask(tmp_path / "1cls/candle/ground_truth/bad/005.png")
    with pytest.raises(IngestError, match="mask 1cls/candle/ground_truth/bad/005.png"):
        read_source("visa_1cls", tmp_path, source="visa")


# ----------------------------------------------------------------------------------------- BTAD


def test_btad(tmp_path: Path) -> None:
    build_btad(tmp_path)
    manifest = read_source("btad", tmp_path)
    check_manifest(manifest, tmp_path, "btad")
    assert len(manifest) == 9 and set(manifest["category"]) == {"01", "02"}
    rows = _by_path(manifest)
    # 01/ground_truth/ko/0000.png exists, but an ok image never takes a ko mask
    assert rows.loc["01/test/ok/0000.bmp", "label"] == 0
    ko = rows.loc["01/test/ko/0001.bmp"]
    assert (ko["mask_path"], ko["defect_name"], ko["bbox"]) == (
        "01/ground_truth/ko/0001.png",
        "ko",
        [0, 1, 8, 1],
    )
    assert rows.loc["02/test/ko/0000.png", "mask_path"] == "02/ground_truth/ko/0000.png"
    assert (manifest["split"] == "train").sum() == 4


def test_btad_listing_rows(tmp_path: Path) -> None:
    """The registry's btad lister: every item and problem of a small tree, in order. ``ok`` is the
    normal folder; a missing mask is expected at ``<stem>.png``; a ``ko`` mask named like an ``ok``
    image has no image."""
    build_btad(tmp_path)
    (tmp_path / "01/ground_truth/ko/0001.png").unlink()
    write_image(tmp_path / "02/test/ok/0005.png")
    write_mask(tmp_path / "02/ground_truth/ko/0005.png")
    spec = {"name": "b", "format": "btad", "root": str(tmp_path)}
    listing, roots = list_source(spec, str(tmp_path), tmp_path / "masks")
    assert (listing.source, listing.root, listing.mask_root) == ("b", tmp_path, None)
    assert roots == {"b": str(tmp_path)}
    ko = "01/ground_truth/ko"
    assert listing.items == [
        Item("01", "train", "01/train/ok/0000.bmp"),
        Item("01", "train", "01/train/ok/0001.bmp"),
        Item("01", "test", "01/test/ko/0000.bmp", f"{ko}/0000.png", "ko"),
        Item("01", "test", "01/test/ko/0001.bmp", f"{ko}/0001.png", "ko"),  # missing: <stem>.png
        Item("01", "test", "01/test/ok/0000.bmp"),
        Item("02", "train", "02/train/ok/0000.png"),
        Item("02", "train", "02/train/ok/0001.png"),
        Item("02", "test", "02/test/ko/0000.png", "02/ground_truth/ko/0000.png", "ko"),
        Item("02", "test", "02/test/ok/0000.png"),
        Item("02", "test", "02/test/ok/0005.png"),
    ]
    orphan = "02/ground_truth/ko/0005.png"
    assert listing.problems == [
        Problem(
            "b",
            "mask_without_image",
            orphan,
            f"mask {orphan} under {tmp_path} has no image: expected 02/test/ko/0005.<ext>",
        )
    ]


def test_btad_bad_inputs(tmp_path: Path) -> None:
    build_btad(tmp_path)
    (tmp_path / "01/ground_truth/ko/0001.png").unlink()
    # a bmp mask, of the wrong size
    write_mask(tmp_path / "01/ground_truth/ko/0001.bmp", size=(8, 5))
    with pytest.raises(
        IngestError, match="ko/0001.bmp is 5x8 but image 01/test/ko/0001.bmp is 8x8"
    ):
        read_source("btad", tmp_path)
    (tmp_path / "01/ground_truth/ko/0001.bmp").unlink()
    with pytest.raises(IngestError, match="anomalous image 01/test/ko/0001.bmp .* has no mask"):
        read_source("btad", tmp_path)
    write_mask(tmp_path / "01/ground_truth/ko/0001.png")
    write_image(tmp_path / "02/test/ok/0005.png")  # same stem as the mask below, but in ok/
    write_mask(tmp_path / "02/ground_truth/ko/0005.png")
    with pytest.raises(IngestError, match="mask 02/ground_truth/ko/0005.png .* has no image"):
        read_source("btad", tmp_path)


# ------------------------------------------------------------------------------------- Real-IAD

OK_C1 = "OK/S0001/audiojack_0001_OK_C1_20231021130727.jpg"
OK_C2 = "OK/S0001/audiojack_0001_OK_C2_20231021130728.jpg"
NG_C3 = "NG/BX/S0002/audiojack_0002_NG_BX_C3_20231021130800.jpg"
NG_C5 = "NG/BX/S0002/audiojack_0002_NG_BX_C5_20231021130801.jpg"  # defect not seen from C5
NG_C3_MASK = NG_C3.removesuffix(".jpg") + "_mask.png"


def _sample(image: str, anomaly_class: str = "OK", mask: str | None = None) -> dict:
    return {
        "category": "audiojack",
        "anomaly_class": anomaly_class,
        "image_path": image,
        "mask_path": mask,
    }


def build_realiad(root: Path, *, nested: bool = False) -> Path:
    """realiad_256/audiojack/{OK,NG/BX}/S####/*.jpg, masks beside; returns the JSON's path."""
    cat = root / "realiad_256/audiojack"
    for image in (OK_C1, OK_C2, NG_C3, NG_C5):
        write_image(cat / image)
    write_mask(cat / NG_C3_MASK, box=(0, 0, 2, 8))
    doc = {
        "meta": {"prefix": "audiojack/", "normal_class": "OK", "pre_transform": None},
        "train": [_sample(OK_C1)],
        "test": [_sample(OK_C2), _sample(NG_C3, "BX", NG_C3_MASK), _sample(NG_C5)],
    }
    json_dir = root / ("realiad_jsons/realiad_jsons" if nested else "realiad_jsons")
    json_dir.mkdir(parents=True)
    if nested:  # a sibling split set that must not be read by default
        (root / "realiad_jsons/realiad_jsons_sv").mkdir()
        (root / "realiad_jsons/realiad_jsons_sv/audiojack.json").write_text("not json")
    (json_dir / "audiojack.json").write_text(json.dumps(doc))
    return json_dir / "audiojack.json"


@pytest.mark.parametrize("nested", [False, True])
def test_realiad(tmp_path: Path, nested: bool) -> None:
    build_realiad(tmp_path, nested=nested)
    manifest = read_source("realiad", tmp_path)
    check_manifest(manifest, tmp_path, "realiad")
    assert len(manifest) == 4 and set(manifest["category"]) == {"audiojack"}
    rows = _by_path(manifest.assign(image_path=manifest["image_path"].str.split("/", n=2).str[2]))
    assert rows.loc[OK_C1, "split"] == "train" and (manifest["split"] == "test").sum() == 3
    assert [rows.loc[p, "view"] for p in (OK_C1, OK_C2, NG_C3, NG_C5)] == ["C1", "C2", "C3", "C5"]
    ng = rows.loc[NG_C3]
    assert ng["mask_path"] == f"realiad_256/audiojack/{NG_C3_MASK}"
    assert (ng["label"], ng["defect_name"], ng["bbox"]) == (1, "BX", [0, 0, 2, 8])
    assert (rows.loc[NG_C5, "label"], rows.loc[NG_C5, "defect_name"]) == (0, "")  # NG/ but "OK"
    assert camera_view("x/audiojack_0001_OK_C4_2023.jpg") == "C4" and camera_view("C1.jpg") == "C1"
    path = (
        tmp_path / ("realiad_jsons/realiad_jsons" if nested else "realiad_jsons") / "audiojack.json"
    )
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "meta": {"normal_class": "OK"}}))  # no prefix: <cat>/
    assert read_source("realiad", tmp_path).equals(manifest)
    with pytest.raises(IngestError, match="realiad_512 missing"):
        read_source("realiad", tmp_path, resolution="512")


def test_realiad_bad_inputs(tmp_path: Path) -> None:
    path = build_realiad(tmp_path)
    good = path.read_text()
    path.write_text(good[:-5])
    with pytest.raises(IngestError, match="malformed JSON realiad_jsons/audiojack.json"):
        read_source("realiad", tmp_path)
    path.write_text(good.replace('"image_path": "OK/S0001', '"image": "OK/S0001', 1))
    with pytest.raises(
        IngestError, match=r"audiojack.json train\[0\] lacks the field 'image_path'"
    ):
        read_source("realiad", tmp_path)
    path.write_text(good)
    mask = tmp_path / "realiad_256/audiojack" / NG_C3_MASK
    mask.rename(mask.with_name("moved.png"))
    with pytest.raises(IngestError, match=re.escape(f"image realiad_256/audiojack/{NG_C3}")):
        read_source("realiad", tmp_path)
    mask.with_name("moved.png").unlink()
    write_mask(mask, size=(8, 4))
    with pytest.raises(IngestError, match=r"_mask.png is 4x8 but image .*_C3_.*\.jpg is 8x8"):
        read_source("realiad", tmp_path)
    write_mask(mask)
    orphan = tmp_path / "realiad_256/audiojack/NG/BX/S0002/audiojack_0002_NG_BX_C2_2023_mask.png"
    write_mask(orphan)
    with pytest.raises(IngestError, match=re.escape(f"mask {orphan.relative_to(tmp_path)}")):
        read_source("realiad", tmp_path)


# ---------------------------------------------------------------------------------- MVTec 3D-AD


def build_mvtec3d(root: Path) -> None:
    """<cls>/{train,validation,test}/<label>/{rgb,gt,xyz}/000.*; good gt masks are all zero."""
    for cls in ("bagel", "cookie"):
        for split, label in (("train", "good"), ("validation", "good"), ("test", "good")):
            write_image(root / f"{cls}/{split}/{label}/rgb/000.png")
            write_mask(root / f"{cls}/{split}/{label}/gt/000.png", value=0)
            (root / f"{cls}/{split}/{label}/xyz").mkdir()
            (root / f"{cls}/{split}/{label}/xyz/000.tiff").write_bytes(b"xyz is not read")
        for i, label in enumerate(("crack", "hole")):
            write_image(root / f"{cls}/test/{label}/rgb/000.png")
            write_mask(root / f"{cls}/test/{label}/gt/000.png", box=(i, i, 3, 3))


def test_mvtec3d(tmp_path: Path) -> None:
    build_mvtec3d(tmp_path)
    manifest = read_source("mvtec3d", tmp_path)
    check_manifest(manifest, tmp_path, "mvtec3d")
    assert len(manifest) == 10 and (manifest["split"] == "train").sum() == 4
    rows = _by_path(manifest)
    assert rows.loc["bagel/validation/good/rgb/000.png", "split"] == "train"
    hole = rows.loc["cookie/test/hole/rgb/000.png"]
    assert (hole["mask_path"], hole["defect_name"], hole["bbox"]) == (
        "cookie/test/hole/gt/000.png",
        "hole",
        [1, 1, 3, 3],
    )
    assert set(manifest.loc[manifest["label"] == 1, "defect_name"]) == {"crack", "hole"}


def test_mvtec3d_bad_inputs(tmp_path: Path) -> None:
    build_mvtec3d(tmp_path)
    gt = tmp_path / "bagel/test/crack/gt/000.png"
    write_mask(gt, size=(8, 3))
    with pytest.raises(IngestError, match="crack/gt/000.png is 3x8 .*crack/rgb/000.png is 8x8"):
        read_source("mvtec3d", tmp_path)
    gt.unlink()
    with pytest.raises(IngestError, match="anomalous image bagel/test/crack/rgb/000.png"):
        read_source("mvtec3d", tmp_path)
    write_mask(gt)
    write_mask(tmp_path / "bagel/test/hole/gt/001.png")
    with pytest.raises(IngestError, match="mask bagel/test/hole/gt/001.png .* has no image"):
        read_source("mvtec3d", tmp_path)


# --------------------------------------------------------------------------------------- folder


def build_folder(root: Path) -> None:
    """<cat>/{good,<defect>}/* with masks in ground_truth/<cat>/<defect>/<stem>[_mask].<ext>."""
    for image in ("pcb/good/a.png", "pcb/good/b.png", "pcb/scratch/a.png", "pcb/hole/b.jpg"):
        write_image(root / image)
    write_mask(root / "ground_truth/pcb/scratch/a_mask.png")
    write_mask(root / "ground_truth/pcb/hole/b.png", box=(5, 5, 3, 3))
    write_image(root / "phone/good/x.png")
    write_image(root / "phone/crack/x.png")
    write_mask(root / "ground_truth/phone/crack/x_mask.png")


def test_folder(tmp_path: Path) -> None:
    build_folder(tmp_path)
    manifest = read_source("folder", tmp_path, source="miad")
    check_manifest(manifest, tmp_path, "miad")
    assert len(manifest) == 6 and set(manifest["category"]) == {"pcb", "phone"}
    assert (manifest["split"] == "test").all()
    rows = _by_path(manifest)
    assert rows.loc["pcb/hole/b.jpg", "mask_path"] == "ground_truth/pcb/hole/b.png"
    assert rows.loc["pcb/hole/b.jpg", "bbox"] == [5, 5, 3, 3]
    assert rows.loc["pcb/scratch/a.png", "mask_path"] == "ground_truth/pcb/scratch/a_mask.png"
    assert (
        rows.loc["pcb/good/a.png", "label"] == 0
    )  # ground_truth/pcb/scratch/a_mask.png is not its
    assert (read_source("folder", tmp_path, split="train")["split"] == "train").all()
    with pytest.raises(IngestError, match="split must be one of"):
        read_source("folder", tmp_path, split="val")


def test_folder_bad_inputs(tmp_path: Path) -> None:
    build_folder(tmp_path)
    write_mask(tmp_path / "ground_truth/pcb/dent/c.png")  # no pcb/dent/ folder at all
    with pytest.raises(
        IngestError, match="mask ground_truth/pcb/dent/c.png .* expected pcb/dent/c"
    ):
        read_source("folder", tmp_path)
    (tmp_path / "ground_truth/pcb/dent/c.png").unlink()
    (tmp_path / "ground_truth/phone/crack/x_mask.png").unlink()
    with pytest.raises(IngestError, match="phone/crack/x.png .* expected ground_truth/phone/crack"):
        read_source("folder", tmp_path)
    write_mask(tmp_path / "ground_truth/phone/crack/x_mask.png", size=(7, 8))
    with pytest.raises(IngestError, match="x_mask.png is 8x7 but image phone/crack/x.png is 8x8"):
        read_source("folder", tmp_path)


# ----------------------------------------------------------------------------------------- MMAD


def _turn(question: str, answer: str, kind: str, **extra: object) -> dict:
    return {
        "Question": question,
        "Answer": answer,
        "Options": {"A": "Yes.", "B": "No."},
        "type": kind,
        **extra,
    }


def build_mmad(path: Path) -> dict:
    doc = {
        "DS-MVTec/bottle/image/broken_large/000.png": {
            "image_path": "DS-MVTec/bottle/image/broken_large/000.png",
            "mask_path": "DS-MVTec/bottle/rbg_mask/broken_large/000_rbg_mask.png",
            "similar_templates": ["MVTec-AD/bottle/train/good/001.png"],
            "random_templates": ["MVTec-AD/bottle/train/good/007.png"],
            "conversation": [
                _turn(
                    "Is there any defect in the object?", "A", "Anomaly Detection", annotation=True
                ),
                _turn("Is the defect on the rim?", "B", "Defect Localization"),
            ],
        },
        "VisA/candle/image/good/0001.JPG": {
            "mask_path": None,
            "similar_templates": [],
            "random_templates": [],
            "conversation": [_turn("Is there any defect in the object?", "B", "Anomaly Detection")],
        },
    }
    path.write_text(json.dumps(doc))
    return doc


def test_mmad(tmp_path: Path) -> None:
    build_mmad(tmp_path / "mmad.json")
    frame = read_mmad(tmp_path / "mmad.json")
    assert list(frame.columns) == MMAD_COLUMNS and len(frame) == 3
    assert list(frame["question_index"]) == [0, 1, 0] and frame["question_index"].dtype == "int64"
    assert list(frame["answer"]) == ["A", "B", "B"]
    assert frame.loc[1, "options"] == {"A": "Yes.", "B": "No."}
    assert frame.loc[1, "type"] == "Defect Localization"
    assert (
        frame.loc[0, "mask_path"].endswith("000_rbg_mask.png") and frame.loc[2, "mask_path"] == ""
    )


def test_mmad_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "mmad.json"
    doc = build_mmad(path)
    bottle = "DS-MVTec/bottle/image/broken_large/000.png"
    path.write_text(json.dumps(doc)[:-3])
    with pytest.raises(IngestError, match="mmad.json"):
        read_mmad(path)
    del doc["VisA/candle/image/good/0001.JPG"]["random_templates"]
    path.write_text(json.dumps(doc))
    with pytest.raises(
        IngestError, match=r"VisA/candle/image/good/0001.JPG'\] lacks .*random_temp"
    ):
        read_mmad(path)
    doc["VisA/candle/image/good/0001.JPG"]["random_templates"] = []
    doc[bottle]["conversation"][1]["Answer"] = "C"
    path.write_text(json.dumps(doc))
    with pytest.raises(IngestError, match=re.escape(f"{bottle}'].conversation[1].Answer 'C'")):
        read_mmad(path)
    del doc[bottle]["conversation"][1]["Options"]
    path.write_text(json.dumps(doc))
    with pytest.raises(IngestError, match=r"conversation\[1\] lacks the field 'Options'"):
        read_mmad(path)


# ---------------------------------------------------------------------------------- every reader

FORMATS = ["visa", "visa_1cls", "btad", "realiad", "mvtec3d", "folder"]


@pytest.mark.parametrize(
    ("build", "fmt", "image"),
    [
        (build_visa, "visa", "candle/Data/Images/Normal/0001.JPG"),
        (build_visa_1cls, "visa_1cls", "1cls/candle/train/good/0001.JPG"),
        (build_btad, "btad", "02/train/ok/0001.png"),
        (build_realiad, "realiad", f"realiad_256/audiojack/{OK_C2}"),
        (build_mvtec3d, "mvtec3d", "cookie/validation/good/rgb/000.png"),
        (build_folder, "folder", "phone/good/x.png"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_unreadable_image_is_named(tmp_path: Path, build: Callable, fmt: str, image: str) -> None:
    build(tmp_path)
    assert (tmp_path / image).is_file()
    (tmp_path / image).write_bytes(b"not an image")
    with pytest.raises(IngestError, match=re.escape(f"unreadable image {image}")):
        read_source(fmt, tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_and_empty_root(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(IngestError, match="nowhere"):
        read_source(fmt, tmp_path / "nowhere")
    (tmp_path / "empty/notes").mkdir(parents=True)
    with pytest.raises(IngestError, match=re.escape(str(tmp_path / "empty"))):
        read_source(fmt, tmp_path / "empty")
    with pytest.raises(IngestError, match="nowhere.json"):
        read_mmad(tmp_path / "nowhere.json")


def test_webp_images_are_read_as_every_other_format(tmp_path: Path) -> None:
    """A .webp image was skipped without a word by ingest while serving and predict read it:
    one list of image suffixes (images.IMAGE_SUFFIXES) now serves them all."""
    import numpy as np
    from helpers.sources import read_source
    from PIL import Image

    from vmad_pipeline.datasets.files import list_images

    good = tmp_path / "bolt" / "test" / "good"
    good.mkdir(parents=True)
    (tmp_path / "bolt" / "train" / "good").mkdir(parents=True)
    pixels = np.full((24, 24, 3), 90, np.uint8)
    Image.fromarray(pixels).save(good / "000.webp", lossless=True)
    Image.fromarray(pixels).save(tmp_path / "bolt" / "train" / "good" / "000.png")
    assert [p.name for p in list_images(good)] == ["000.webp"]
    rows = read_source("mvtec", tmp_path)
    assert sorted(rows["image_path"]) == ["bolt/test/good/000.webp", "bolt/train/good/000.png"]
