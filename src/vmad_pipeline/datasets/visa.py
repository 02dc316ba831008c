"""Readers for VisA: the raw release (:func:`list_visa`) and the converted tree (:func:`list_visa_1cls`).

Raw layout (the root is the release folder, e.g. ``VisA_20220922/``)::

    <root>/<obj>/Data/Images/Normal/0000.JPG
    <root>/<obj>/Data/Images/Anomaly/000.JPG
    <root>/<obj>/Data/Masks/Anomaly/000.png      (values are small integers; > 0 is anomalous)
    <root>/split_csv/1cls.csv                    (object,split,label,image,mask)

The CSV decides everything: ``object`` is the category, ``split`` is train/test, ``label`` is
normal/anomaly, ``image`` and ``mask`` are paths relative to the root (``mask`` empty exactly for
normal rows). The raw release names no defect per image, so ``defect_name`` is "anomaly". A mask in
``Data/Masks/Anomaly`` whose stem names no image in ``Data/Images/Anomaly`` is reported
(``mask_without_image``); a CSV line that breaks the format is reported (``malformed_metadata``,
file and line) and only that line is dropped; a CSV that is missing or has the wrong header drops
the whole source.

Converted layout (``utils/prepare_data.py`` of amazon-science/spot-diff, split type 1cls)::

    <root>/1cls/<obj>/train/good/*.JPG
    <root>/1cls/<obj>/test/{good,bad}/*.JPG
    <root>/1cls/<obj>/ground_truth/bad/<stem>.png   (binarised to 0/255)

It is the MVTec layout, listed by :func:`list_mvtec`; ``root`` may be ``VisA_pytorch/`` (paths then
start with ``1cls/``) or the ``1cls`` folder itself. ``defect_name`` "bad" becomes "anomaly", as in the
raw layout, so that both readers give VisA the same defect name.
"""

from __future__ import annotations

import csv
import os
from dataclasses import replace

from vmad_pipeline.datasets.files import check_masks_paired, list_images, require_root
from vmad_pipeline.datasets.listing import Item, Listing
from vmad_pipeline.datasets.mvtec import list_mvtec

CSV_COLUMNS = ["object", "split", "label", "image", "mask"]
LABELS = {"normal": 0, "anomaly": 1}
DEFECT_NAME = "anomaly"


def _read_split_csv(listing: Listing, split_csv: str) -> list[dict[str, str]]:
    """The CSV's valid records; each bad line (or a bad file) becomes a problem."""
    root, path = listing.root, listing.root / split_csv
    if not path.is_file():
        listing.problem(
            "malformed_metadata",
            split_csv,
            f"VisA split file {split_csv} under {root} does not exist",
        )
        return []
    records = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if [h.strip() for h in header] != CSV_COLUMNS:
                listing.problem(
                    "malformed_metadata",
                    split_csv,
                    f"{split_csv}: header is {header}, expected {','.join(CSV_COLUMNS)}",
                )
                return []
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
                listing.problem(
                    "malformed_metadata",
                    f"{split_csv}:{line}",
                    f"{split_csv} line {line} ({record.get('image', '')}) {problem}",
                    record.get("image", ""),
                )
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        listing.problem(
            "malformed_metadata", split_csv, f"unreadable CSV {split_csv} under {root}: {error}"
        )
        return []
    if not records and not listing.problems:
        listing.problem(
            "malformed_metadata", split_csv, f"{split_csv} under {root} lists no images"
        )
    return records


def list_visa(
    root: str | os.PathLike[str], *, source: str = "visa", split_csv: str = "split_csv/1cls.csv"
) -> Listing:
    """The items of the raw VisA release, as split by ``split_csv`` (relative to ``root``)."""
    listing = Listing(source, require_root(root))
    records = _read_split_csv(listing, split_csv)
    for obj in sorted({r["object"] for r in records}):
        data = listing.root / obj / "Data"
        check_masks_paired(listing, list_images(data / "Masks/Anomaly"), data / "Images/Anomaly")
    for r in records:
        mask = r["mask"] or None
        listing.items.append(
            Item(r["object"], r["split"], r["image"], mask, DEFECT_NAME if mask else "")
        )
    return listing


def list_visa_1cls(root: str | os.PathLike[str], *, source: str = "visa") -> Listing:
    """The items of the converted ``VisA_pytorch/1cls`` tree (see the module docstring)."""
    root = require_root(root)
    listing = list_mvtec(root, source=source, subdir="1cls" if (root / "1cls").is_dir() else "")
    listing.items = [
        replace(item, defect_name=DEFECT_NAME) if item.mask else item for item in listing.items
    ]
    return listing
