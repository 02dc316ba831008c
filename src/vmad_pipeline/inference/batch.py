"""Prediction on new, unlabelled images: which files, their object names, and the run that
writes a mask, a map, an overlay and a JSON line for each (``inference.store``).

Streams in batches; a rerun skips what is done; an unreadable file gets a line with its error
and the rest goes on.
"""

from __future__ import annotations

import glob
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vmad_pipeline.configs.predict import DEFAULT_MAX_PIXELS
from vmad_pipeline.images import IMAGE_SUFFIXES, check_pixels, read_rgb
from vmad_pipeline.prompts import object_text

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "test", "ground_truth", "validation", "val")


@dataclass(frozen=True)
class Item:
    path: Path
    category: str
    key: str  # unique within a run, safe as a file name


def folder_category(path: Path) -> str:
    """The object name a file's folders give: in an MVTec layout (``<class>/test/<defect>/x.png``)
    the folder above ``train``/``test``/...; else the file's own folder."""
    for parent in path.parents:
        if parent.name in SPLIT_FOLDERS and parent.parent.name:
            return parent.parent.name
    return path.parent.name or "object"


def _is_image(f: Path) -> bool:
    """An image file, not a mask of an MVTec layout (under ``ground_truth/``)."""
    return f.suffix.lower() in IMAGE_SUFFIXES and "ground_truth" not in f.parts and f.is_file()


def _images_of(spec: str) -> tuple[list[Path], Path]:
    """The image files a folder or glob names, sorted, and the folder keys are relative to."""
    p = Path(spec)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if _is_image(f)), p
    files = [f for f in map(Path, glob.glob(spec, recursive=True)) if _is_image(f)]
    prefix = re.split(r"[*?\[]", spec, maxsplit=1)[0]  # the folders before the first wildcard
    base = Path(prefix) if prefix.endswith(("/", "\\")) or not prefix else Path(prefix).parent
    return sorted(files), base


def _key(path: Path, base: Path) -> str:
    try:
        rel = path.resolve().relative_to(base.resolve())
    except ValueError:
        rel = Path(path.name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join(rel.with_suffix("").parts))


def list_inputs(spec: str, category: str | None = None) -> list[Item]:
    """``spec``: a folder, a glob, or a manifest (.csv / .parquet: ``image_path`` relative to its
    folder or absolute, optional ``category``). ``category`` (given) names every image's object;
    else the manifest's, else :func:`folder_category`. Nothing found: FileNotFoundError."""
    p = Path(spec)
    if p.is_file() and p.suffix.lower() in (".csv", ".parquet"):
        table = pd.read_parquet(p) if p.suffix.lower() == ".parquet" else pd.read_csv(p)
        if "image_path" not in table.columns:
            raise ValueError(f"predict.input {spec}: a manifest needs a column image_path")
        paths = [Path(v) if Path(v).is_absolute() else p.parent / v for v in table["image_path"]]
        cats = list(table["category"]) if "category" in table.columns else [None] * len(paths)
        base = p.parent
    else:
        paths, base = _images_of(spec)
        cats = [None] * len(paths)
    if not paths:
        raise FileNotFoundError(
            f"predict.input {spec!r}: no image found (folder, glob or manifest)"
        )
    items, seen = [], set()
    for path, cat in zip(paths, cats, strict=True):
        key = _key(path, base)
        if key in seen:
            raise ValueError(f"predict.input {spec!r}: {path} is listed twice")
        seen.add(key)
        items.append(Item(path, category or (str(cat) if cat else folder_category(path)), key))
    return items


def read_item(it: Item, max_pixels: int, limit: str = "predict.max_pixels") -> np.ndarray:
    """An input image as H x W x 3 uint8, refused (ValueError naming it) past ``max_pixels``
    from its header, before anything is decoded: the one read of predict's images and of its
    batch-mode references."""
    check_pixels(it.path, max_pixels, limit=limit)
    return read_rgb(it.path)


def _chunks(items: list[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_items(
    detector,
    items: list[Item],
    store,
    batch_size: int,
    progress: bool,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    references=None,
) -> dict:
    """Predict every item not yet in ``store`` with ``detector`` (``inference.service``: its
    thresholds decide, or the references' own threshold); returns counts (done before,
    predicted, failed). An unreadable image, one of more than ``max_pixels`` pixels (refused
    from its header, nothing decoded) and a name the text rule refuses each get an error line;
    the others go on. ``references``: ``inference.references.References`` (None: zero-shot)."""
    from vmad_pipeline.inference.references import inspection_args

    done = store.done()
    todo = [it for it in items if it.key not in done]
    counts = {"images": len(items), "already_done": len(items) - len(todo), "predicted": 0}
    counts["failed"] = 0
    bar = tqdm(total=len(todo), desc="predict", unit="img", disable=not progress)
    start = time.perf_counter()
    for chunk in _chunks(todo, batch_size):
        ok, originals = [], []
        for it in chunk:
            try:
                object_text(it.category)  # a manifest's name: the one rule for a user's text
                originals.append(read_item(it, max_pixels))  # once: its size for the outputs
            except ValueError as err:
                store.write(_base(it) | {"error": str(err)})
                counts["failed"] += 1
                continue
            ok.append(it)
        cats = [it.category for it in ok]
        given = inspection_args(references, [it.key for it in ok], cats)  # {}: zero-shot
        found = detector.inspect(originals, cats, **given)
        cut = given.get("threshold")
        for it, seen in zip(ok, found, strict=True):
            record = _record(it, seen, detector) | _references_record(references, cut, seen)
            if references is not None:  # how many look unlike them (another product?)
                counts["unlike_references"] = counts.get("unlike_references", 0) + int(
                    seen.unlike_references
                )
            store.write(record, _pictures(seen))
        counts["predicted"] += len(ok)
        bar.update(len(chunk))
    bar.close()
    if counts.get("unlike_references"):
        log.warning(
            "%d image(s) look unlike their references (another product?): see 'warning' in "
            "their lines",
            counts["unlike_references"],
        )
    seconds = time.perf_counter() - start
    counts["seconds"] = round(seconds, 2)
    counts["images_per_s"] = round(len(todo) / seconds, 2) if todo and seconds > 0 else None
    return counts


def _references_record(references, cut: float | None, seen) -> dict:
    """What a JSON line says of the references it was compared with: their name, the threshold
    they chose, and a warning when the image is unlike them (another product?)."""
    if references is None:
        return {}
    out = {"references": references.label}
    if cut is not None:
        out["image_threshold"] = cut
    if seen.unlike_references:
        from vmad_pipeline.inference.references import UNLIKE

        out["warning"] = UNLIKE
    return out


def _base(it: Item) -> dict:
    return {"key": it.key, "image": str(it.path), "category": it.category}


def _pictures(seen) -> dict[str, np.ndarray]:
    return {"masks": seen.mask, "maps": seen.map, "overlays": seen.overlay}


def _record(it: Item, seen, detector) -> dict:
    return _base(it) | {
        "score": round(seen.score, 6),
        "anomalous": seen.anomalous,
        "image_threshold": detector.image_threshold,
        "defect_type": seen.defect_type,
        "location": seen.location,
        "answer": seen.answer,
        "seg_found": seen.seg_found,
        "repeats_itself": seen.repeats_itself,  # zero-shot, its score was scaled down
    }
