"""Readers for VisA: the raw release (:func:`read_visa`) and the converted tree (:func:`read_visa_1cls`).

Raw layout (the root is the release folder, e.g. ``VisA_20220922/``)::

    <root>/<obj>/Data/Images/Normal/0000.JPG
    <root>/<obj>/Data/Images/Anomaly/000.JPG
    <root>/<obj>/Data/Masks/Anomaly/000.png      (values are small integers; > 0 is anomalous)
    <root>/split_csv/1cls.csv                    (object,split,label,image,mask)

The CSV decides everything: ``object`` is the category, ``split`` is train/test, ``label`` is
normal/anomaly, ``image`` and ``mask`` are paths relative to the root (``mask`` empty exactly for
normal rows). The raw release names no defect per image, so ``defect_name`` is "anomaly". A mask in
``Data/Masks/Anomaly`` whose stem names no image in ``Data/Images/Anomaly`` is an error.

Converted layout (``utils/prepare_data.py`` of amazon-science/spot-diff, split type 1cls)::

    <root>/1cls/<obj>/train/good/*.JPG
    <root>/1cls/<obj>/test/{good,bad}/*.JPG
    <root>/1cls/<obj>/ground_truth/bad/<stem>.png   (binarised to 0/255)

It is the MVTec layout, read by :func:`read_mvtec`; ``root`` may be ``VisA_pytorch/`` (paths then
start with ``1cls/``) or the ``1cls`` folder itself. ``defect_name`` "bad" becomes "anomaly", as in the
raw layout, so that both readers give VisA the same defect name.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from vmad_pipeline.datasets.folder import (
    check_masks_paired,
    finish_manifest,
    image_row,
    list_images,
    rel,
    require_root,
)
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.mvtec import MASK_FOLDER, _subdirs, find_classes, read_mvtec

CSV_COLUMNS = ["object", "split", "label", "image", "mask"]
LABELS = {"normal": 0, "anomaly": 1}
DEFECT_NAME = "anomaly"


def _read_split_csv(path: Path, root: Path) -> list[dict[str, str]]:
    where = rel(path, root) if path.is_relative_to(root) else str(path)
    if not path.is_file():
        raise IngestError(f"VisA split file {where} under {root} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if [h.strip() for h in header] != CSV_COLUMNS:
            raise IngestError(f"{where}: header is {header}, expected {','.join(CSV_COLUMNS)}")
        records = []
        for line, fields in enumerate(reader, start=2):
            if not fields:
                continue
            record = dict(zip(CSV_COLUMNS, [f.strip() for f in fields], strict=False))
            if len(fields) != len(CSV_COLUMNS):
                problem = f"has {len(fields)} fields, expected {len(CSV_COLUMNS)}"
            elif record["split"] not in ("train", "test"):
                problem = f"split {record['split']!r} is not train/test"
            elif record["label"] not in LABELS:
                problem = f"label {record['label']!r} is not one of {sorted(LABELS)}"
            elif record["label"] == "anomaly" and not record["mask"]:
                problem = "is anomalous but has no mask"
            elif record["label"] == "normal" and record["mask"]:
                problem = f"is normal but has a mask ({record['mask']})"
            else:
                records.append(record)
                continue
            raise IngestError(f"{where} line {line} ({record.get('image', '')}) {problem}")
    if not records:
        raise IngestError(f"{where} under {root} lists no images")
    return records


def read_visa(
    root: str | os.PathLike[str],
    *,
    source: str = "visa",
    split_csv: str = "split_csv/1cls.csv",
    progress: bool = True,
) -> pd.DataFrame:
    """The manifest of the raw VisA release, as split by ``split_csv`` (relative to ``root``)."""
    root = require_root(root)
    records = _read_split_csv(root / split_csv, root)
    for obj in sorted({r["object"] for r in records}):
        data = root / obj / "Data"
        check_masks_paired(root, list_images(data / "Masks/Anomaly"), data / "Images/Anomaly")
    rows = []
    for record in tqdm(records, desc=f"reading {source}", disable=not progress):
        image = root / record["image"]
        if not image.is_file():
            raise IngestError(f"{split_csv} lists image {record['image']} missing under {root}")
        rows.append(
            image_row(
                root,
                image,
                source=source,
                category=record["object"],
                split=record["split"],
                mask=root / record["mask"] if record["mask"] else None,
                defect_name=DEFECT_NAME,
            )
        )
    return finish_manifest(rows, root, source)


def read_visa_1cls(
    root: str | os.PathLike[str], *, source: str = "visa", progress: bool = True
) -> pd.DataFrame:
    """The manifest of the converted ``VisA_pytorch/1cls`` tree (see the module docstring)."""
    root = require_root(root)
    base = root / "1cls" if (root / "1cls").is_dir() else root
    for cls in find_classes(base):
        gt_root = base / cls / MASK_FOLDER
        for gt_dir in _subdirs(gt_root) if gt_root.is_dir() else []:
            check_masks_paired(root, list_images(gt_dir), base / cls / "test" / gt_dir.name)
    manifest = read_mvtec(base, source=source, progress=progress)
    prefix = "" if base == root else "1cls/"
    anomalous = manifest["label"] == 1
    manifest["image_path"] = prefix + manifest["image_path"]
    manifest.loc[anomalous, "mask_path"] = prefix + manifest.loc[anomalous, "mask_path"]
    manifest.loc[anomalous, "defect_name"] = DEFECT_NAME
    return manifest
