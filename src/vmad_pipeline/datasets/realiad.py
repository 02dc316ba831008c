"""Reader for Real-IAD, driven by its split JSONs.

Layout::

    <root>/realiad_{256,512,1024,raw}/<cat>/OK/S0001/<cat>_0001_OK_C1_<time>.jpg
    <root>/realiad_{256,512,1024,raw}/<cat>/NG/<code>/S0002/<cat>_0002_NG_<code>_C3_<time>.jpg
    <root>/realiad_{256,512,1024,raw}/<cat>/NG/<code>/S0002/<cat>_0002_NG_<code>_C3_<time>_mask.png
    <root>/realiad_jsons/<cat>.json    (or realiad_jsons/realiad_jsons/<cat>.json)

Each JSON is ``{"meta": {"prefix": "<cat>/", "normal_class": "OK", ...}, "train": [...],
"test": [...]}`` with samples ``{category, anomaly_class, image_path, mask_path}``. ``prefix`` is the
category's folder relative to the resolution folder, and ``image_path`` / ``mask_path`` are relative
to it: a file is ``<root>/<resolution>/<prefix><image_path>`` (an empty or absent prefix means
``<cat>/``, the JSON's stem). A sample is normal if ``mask_path`` is null or ``anomaly_class`` is
``normal_class``; many views of an NG sample are normal by this rule although they live under
``NG/``. ``defect_name`` is the anomaly class (a code such as "BX"); ``view`` is the file name's
``C1``..``C5`` token ("" if it has none); ``category`` is the JSON's stem. A ``*_mask.png`` next to
no image of its stem is reported (``mask_without_image``); a JSON that does not parse or lacks
``meta``/``train``/``test`` drops its category, a sample that lacks a field drops that sample
(``malformed_metadata``, naming the file and the sample).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

from vmad_pipeline.datasets.files import check_masks_paired, rel, require_root
from vmad_pipeline.datasets.listing import Item, Listing
from vmad_pipeline.datasets.manifest import IngestError

JSON_DIRS = ("realiad_jsons", "realiad_jsons/realiad_jsons")
VIEW = re.compile(r"^C[1-5]$")


def camera_view(path: str | Path) -> str:
    """The ``C1``..``C5`` token of a Real-IAD file name, or ""."""
    return next((t for t in Path(path).stem.split("_") if VIEW.match(t)), "")


def _json_dir(root: Path, jsons: str | None) -> Path:
    for candidate in [jsons] if jsons else JSON_DIRS:
        if any((root / candidate).glob("*.json")):
            return root / candidate
    raise IngestError(
        f"no Real-IAD split JSONs (<cat>.json) in {' or '.join(JSON_DIRS)} under {root}"
    )


def _list_json(listing: Listing, path: Path, base: Path, cat: str) -> Path | None:
    """Add the samples of one split JSON to ``listing``; the category folder, or None if the JSON
    is unusable (reported)."""
    root = listing.root
    where = rel(path, root)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        listing.problem(
            "malformed_metadata", where, f"malformed JSON {where} under {root}: {error}"
        )
        return None
    meta = doc.get("meta", {}) if isinstance(doc, dict) else None
    if not isinstance(meta, dict) or not any(split in doc for split in ("train", "test")):
        listing.problem(
            "malformed_metadata",
            where,
            f"{where}: expected an object with 'meta' and 'train'/'test' lists",
        )
        return None
    normal_class = meta.get("normal_class", "OK")
    prefix = (meta.get("prefix") or path.stem).strip("/")
    for split in ("train", "test"):
        samples = doc.get(split, [])
        if not isinstance(samples, list):
            listing.problem("malformed_metadata", where, f"{where}: {split!r} is not a list")
            continue
        for i, sample in enumerate(samples):
            at = f"{where} {split}[{i}]"
            missing = [
                key
                for key in ("image_path", "anomaly_class", "mask_path")
                if not isinstance(sample, dict) or key not in sample
            ]
            if missing:
                listing.problem(
                    "malformed_metadata",
                    f"{where}:{split}[{i}]",
                    f"{at} lacks the field {missing[0]!r}",
                )
                continue
            image = rel(base / prefix / str(sample["image_path"]), root)
            mask_path, anomaly_class = sample["mask_path"], str(sample["anomaly_class"])
            if mask_path is None or anomaly_class == normal_class:
                item = Item(cat, split, image, view=camera_view(image))
            else:
                mask = rel(base / prefix / str(mask_path), root)
                item = Item(cat, split, image, mask, anomaly_class, view=camera_view(image))
            listing.items.append(item)
    return base / prefix


def list_realiad(
    root: str | os.PathLike[str],
    *,
    resolution: str = "realiad_256",
    source: str = "realiad",
    jsons: str | None = None,
    categories: list[str] | None = None,
) -> Listing:
    """The items of one Real-IAD resolution, split by the JSONs in ``jsons`` (relative to root;
    default: the first of :data:`JSON_DIRS` that holds any)."""
    root = require_root(root)
    resolution = resolution if resolution.startswith("realiad_") else f"realiad_{resolution}"
    base = root / resolution
    if not base.is_dir():
        raise IngestError(f"Real-IAD resolution folder {resolution} missing under {root}")
    files = {p.stem: p for p in sorted(_json_dir(root, jsons).glob("*.json"))}
    if categories is not None:
        unknown = sorted(set(categories) - set(files))
        if unknown:
            raise IngestError(
                f"unknown categories {unknown} under {root}; available: {list(files)}"
            )
        files = {cat: files[cat] for cat in categories}
    listing = Listing(source, root)
    for cat, path in files.items():
        cat_dir = _list_json(listing, path, base, cat)
        if cat_dir is None:
            continue
        masks: dict[Path, list[Path]] = defaultdict(list)
        for mask in cat_dir.rglob("*_mask.png"):
            masks[mask.parent].append(mask)
        for folder, found in sorted(masks.items()):
            check_masks_paired(listing, sorted(found), folder)
    if not listing.items and not listing.problems:
        raise IngestError(f"the Real-IAD JSONs under {root} list no images")
    return listing
