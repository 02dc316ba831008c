"""Reader for a generic COCO source (images + an instances JSON), and the COCO rules that the VISION
reader shares.

Layout (``annotations`` and ``images`` are options, relative to the root)::

    <root>/annotations/instances.json
    <root>/images/<file_name>

The JSON is COCO's ``{"images": [{id, file_name, width, height}], "annotations": [{image_id,
category_id, segmentation, area?}], "categories": [{id, name}]}``. An image with no annotation is
normal; an annotated one is anomalous, its mask is the union of its annotations' segmentations
(polygons ``[[x0, y0, x1, y1, ...], ...]`` or uncompressed RLE ``{"counts": [...], "size": [h, w]}``),
rasterised at the declared size and written (PNG 0/255, atomically) under the source's mask root
``<masks_dir>/<source>/`` (``dataset_roots["<source>:masks"]``) as
``<file_name less extension>.<12 hex of the polygons' hash>.png``: a changed annotation gets a new
file, so the masks of a manifest already ingested are never overwritten. ``defect_name`` is the
category name of the image's largest annotation (by ``area``, else polygon area); ``category`` is the
``category`` option, else the first folder of ``file_name``, else the source name.

Bad input is reported with the JSON file (``malformed_metadata``): a JSON that does not parse or
lacks the three lists drops the whole file; an annotation with an unknown image or category id,
or a segmentation that is neither, drops its image. Compressed RLE (string ``counts``) is not
supported (pycocotools is not a dependency): convert it to polygons or uncompressed RLE first.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

from vmad_pipeline.datasets.files import check_split, rel, require_root
from vmad_pipeline.datasets.listing import Item, Listing, Shapes


def _polygon_area(polygon: tuple[float, ...]) -> float:
    """Shoelace area of ``[x0, y0, x1, y1, ...]``."""
    xs, ys = polygon[0::2], polygon[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2


def _segmentation(ann: dict, width: int, height: int) -> tuple[list, list, str]:
    """(polygons, rle count lists, error text) of one annotation."""
    seg = ann.get("segmentation")
    if isinstance(seg, list) and all(
        isinstance(p, list)
        and len(p) >= 2
        and len(p) % 2 == 0
        and all(isinstance(v, int | float) for v in p)
        for p in seg
    ):
        return [tuple(float(v) for v in p) for p in seg], [], ""
    if isinstance(seg, dict) and "counts" in seg:
        if isinstance(seg["counts"], str):
            return [], [], "has compressed RLE (string counts), which is not supported"
        size = [int(v) for v in seg.get("size", [])]
        if size != [height, width]:
            return [], [], f"has an RLE of size {size}, but its image is {height}x{width} (h x w)"
        counts = tuple(int(c) for c in seg["counts"])
        if sum(counts) != width * height:
            return [], [], f"has RLE counts that sum to {sum(counts)}, expected {width * height}"
        return [], [counts], ""
    return [], [], "has a segmentation that is neither polygons nor RLE"


def _load(listing: Listing, json_path: Path, where: str) -> dict | None:
    """The parsed instances file, or None after a ``malformed_metadata`` problem."""
    root = listing.root
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        listing.problem(
            "malformed_metadata", where, f"malformed JSON {where} under {root}: {error}"
        )
        return None
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(key), list) for key in ("images", "annotations", "categories")
    ):
        listing.problem(
            "malformed_metadata",
            where,
            f"{where}: expected an object with 'images', 'annotations' and 'categories' lists",
        )
        return None
    return doc


def _categories(listing: Listing, doc: dict, where: str) -> dict[object, str] | None:
    """Category id -> name; None (the whole file dropped) if an entry lacks either."""
    categories = {}
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            listing.problem(
                "malformed_metadata", where, f"{where} categories[{i}] lacks 'id' or 'name'"
            )
            return None
        categories[cat["id"]] = str(cat["name"])
    return categories


def _images(listing: Listing, doc: dict, where: str) -> dict[object, dict]:
    """Image id -> image entry; an entry lacking a field is reported and left out."""
    images = {}
    for i, image in enumerate(doc["images"]):
        missing = [
            k
            for k in ("id", "file_name", "width", "height")
            if not isinstance(image, dict) or k not in image
        ]
        if missing:
            listing.problem(
                "malformed_metadata", where, f"{where} images[{i}] lacks the field {missing[0]!r}"
            )
            continue
        images[image["id"]] = image
    return images


def _annotations(
    listing: Listing, doc: dict, where: str, images: dict, categories: dict
) -> tuple[dict[object, list[dict]], dict[object, str]]:
    """Image id -> its annotations (each with its ``_index``), and image id -> the first error
    that drops the image (an unknown category). An unknown image id is reported here."""
    anns: dict[object, list[dict]] = defaultdict(list)
    bad: dict[object, str] = {}
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            listing.problem(
                "malformed_metadata",
                where,
                f"{where} annotations[{i}] names image id "
                f"{ann.get('image_id') if isinstance(ann, dict) else ann!r}, which is not in 'images'",
            )
            continue
        if ann.get("category_id") not in categories:
            bad.setdefault(
                ann["image_id"],
                f"annotations[{i}] has unknown category_id {ann.get('category_id')!r}",
            )
            continue
        anns[ann["image_id"]].append({**ann, "_index": i})
    return anns, bad


class _BadAnnotation(ValueError):
    """An annotation whose segmentation cannot be used: ``args`` = (its index, the error)."""


def _union(
    anns: list[dict], width: int, height: int, categories: dict[object, str]
) -> tuple[Shapes, str]:
    """The union of one image's annotated shapes, and the defect name with the largest area;
    :class:`_BadAnnotation` for the first unusable segmentation."""
    polygons: list[tuple[float, ...]] = []
    rles: list[tuple[int, ...]] = []
    area_by_name: dict[str, float] = defaultdict(float)
    for ann in anns:
        polys, runs, error = _segmentation(ann, width, height)
        if error:
            raise _BadAnnotation(ann["_index"], error)
        polygons += polys
        rles += runs
        area = ann.get("area")
        if not isinstance(area, int | float):
            area = sum(_polygon_area(p) for p in polys) + sum(sum(r[1::2]) for r in runs)
        area_by_name[categories[ann["category_id"]]] += float(area)
    defect = max(sorted(area_by_name), key=lambda name: area_by_name[name])
    return Shapes(tuple(polygons), width, height, tuple(rles)), defect


def list_coco_file(
    listing: Listing,
    json_path: Path,
    image_dir: Path,
    *,
    split: str,
    category: str | None = None,
) -> None:
    """Add the images of one COCO instances file to ``listing`` (rules in the module docstring).
    Image paths are ``image_dir / file_name`` relative to the listing's root."""
    root = listing.root
    where = rel(json_path, root) if json_path.is_relative_to(root) else str(json_path)
    doc = _load(listing, json_path, where)
    categories = None if doc is None else _categories(listing, doc, where)
    if doc is None or categories is None:
        return
    images = _images(listing, doc, where)
    anns, bad = _annotations(listing, doc, where, images, categories)
    for image_id, image in images.items():
        file_name = PurePosixPath(str(image["file_name"]))
        image_rel = rel(image_dir / file_name, root)
        cat = category or (file_name.parts[0] if len(file_name.parts) > 1 else listing.source)
        if image_id in bad:
            listing.problem(
                "malformed_metadata", where, f"{where} {bad[image_id]} ({image_rel})", image_rel
            )
            continue
        if not anns.get(image_id):
            listing.items.append(Item(cat, split, image_rel))
            continue
        try:
            shapes, defect = _union(
                anns[image_id], int(image["width"]), int(image["height"]), categories
            )
        except _BadAnnotation as bad_annotation:
            index, error = bad_annotation.args
            message = f"{where} annotations[{index}] ({image_rel}) {error}"
            listing.problem("malformed_metadata", where, message, image_rel)
            continue
        mask = f"{file_name.with_suffix('').as_posix()}.{shapes.signature()[:12]}.png"
        if image_dir != root:
            mask = f"{rel(image_dir, root)}/{mask}"
        listing.items.append(Item(cat, split, image_rel, mask, defect, shapes=shapes))


def list_coco(
    root: str | os.PathLike[str],
    *,
    source: str = "coco",
    mask_root: str | os.PathLike[str],
    annotations: str = "annotations/instances.json",
    images: str = "images",
    category: str | None = None,
    split: str = "test",
) -> Listing:
    """The items of a generic COCO source; masks are rasterised under ``mask_root``."""
    root = require_root(root)
    check_split(split, root)
    listing = Listing(source, root, Path(mask_root))
    list_coco_file(listing, root / annotations, root / images, split=split, category=category)
    return listing
