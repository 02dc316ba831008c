"""Prediction on new, unlabelled images: which files, their object names, and the run that
writes a mask, a map, an overlay and a JSON line for each (``inference.store``).

Streams in batches; a rerun skips what is done; an unreadable file gets a line with its error
and the rest goes on.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from vmad_pipeline.images import read_rgb, resize_rgb
from vmad_pipeline.metrics.text import parse_defect_type, parse_location

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
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


def _chunks(items: list[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def pictures(image: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The mask, map and overlay PNG arrays at the image's size from a square map ``prob``."""
    h, w = image.shape[:2]
    big = np.asarray(Image.fromarray(prob.astype(np.float32)).resize((w, h), Image.BILINEAR))
    mask = big >= threshold
    overlay = image.copy()
    overlay[mask] = (0.5 * overlay[mask] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
    return {
        "masks": mask.astype(np.uint8) * 255,
        "maps": np.clip(np.rint(big * 255), 0, 255).astype(np.uint8),
        "overlays": overlay,
    }


def predict_items(predictor, items: list[Item], store, cfg, taxonomy=None) -> dict:
    """Predict every item not yet in ``store``; returns counts (done before, predicted, failed)."""
    done = store.done()
    todo = [it for it in items if it.key not in done]
    size = predictor.image_size
    counts = {"images": len(items), "already_done": len(items) - len(todo), "predicted": 0}
    counts["failed"] = 0
    bar = tqdm(total=len(todo), desc="predict", disable=not cfg.progress)
    for chunk in _chunks(todo, cfg.batch_size):
        ok, originals, tensors = [], [], []
        for it in chunk:
            try:
                original = read_rgb(it.path)  # read once: its size for the outputs, resized here
            except ValueError as err:
                store.write(_base(it) | {"error": str(err)})
                counts["failed"] += 1
                continue
            tensors.append(torch.from_numpy(resize_rgb(original, size)).permute(2, 0, 1))
            originals.append(original)
            ok.append(it)
        if ok:
            pred = predictor.predict(
                torch.stack(tensors), [it.category for it in ok], output_size=size
            )
            for k, it in enumerate(ok):
                record = _record(it, pred, k, cfg, taxonomy)
                store.write(record, pictures(originals[k], pred.maps[k], cfg.pixel_threshold))
            counts["predicted"] += len(ok)
        bar.update(len(chunk))
    bar.close()
    return counts


def _base(it: Item) -> dict:
    return {"key": it.key, "image": str(it.path), "category": it.category}


def _record(it: Item, pred, k: int, cfg, taxonomy) -> dict:
    answer = pred.answers[k]
    defect = parse_defect_type(answer, taxonomy) if taxonomy is not None else None
    score = float(pred.scores[k])
    return _base(it) | {
        "score": round(score, 6),
        "anomalous": score >= cfg.image_threshold,
        "image_threshold": cfg.image_threshold,
        "defect_type": defect.name if defect is not None else None,
        "location": parse_location(answer),
        "answer": answer,
        "seg_found": bool(pred.seg_found[k]),
    }
