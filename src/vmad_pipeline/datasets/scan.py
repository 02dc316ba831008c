"""Turn readers' listings into manifest rows: read files in parallel, reuse a cache, collect bad input.

A reader only *lists* (:class:`~vmad_pipeline.datasets.listing.Listing`: one ``Item`` per image,
plus the ``Problem`` s it found in the tree or its metadata). :func:`scan` then reads what must be
read, in parallel (``concurrent.futures``), and builds one row per item; it never keeps an image
in memory after its row is built, so memory grows with the number of rows, not with the pixels.

What is checked per file, and why:

* **Images: bytes hashed, header parsed, end checked** (``image_check: header``, the default).
  The SHA-256 needs every byte anyway; the header gives width and height and proves the file is
  an image of a known format; the same bytes show whether the file ends where its format says
  (JPEG's EOI marker, PNG's IEND chunk, BMP's and TIFF's declared sizes:
  :mod:`~vmad_pipeline.datasets.image_end`), so a cut-off file is a ``truncated_image`` without
  decoding a pixel. Formats without such a check (GIF, WebP, ...) are decoded fully. Fully
  decoding every image costs 5-20x more (JPEG, large PNGs): ``image_check: decode`` does, for a
  first ingestion of a dataset you do not trust (it also finds corrupt data inside a whole file).
* **Masks: fully decoded**, always: the bounding box needs the pixels, and the size must equal the
  image's.

Incremental re-runs: files whose size and mtime are unchanged are not opened again
(:class:`~vmad_pipeline.datasets.cache.FileCache`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from vmad_pipeline.atomic import atomic_file
from vmad_pipeline.configs.ingest import IMAGE_CHECKS, PARALLEL
from vmad_pipeline.datasets.cache import FileCache
from vmad_pipeline.datasets.image_end import END_CHECKED, truncation
from vmad_pipeline.datasets.listing import Item, Listing, Problem, raise_problems
from vmad_pipeline.datasets.manifest import IngestError, coerce_manifest
from vmad_pipeline.datasets.masks import mask_bbox, rasterise
from vmad_pipeline.images import read_mask_values

logger = logging.getLogger(__name__)

_BATCH = 32  # items per task sent to a worker: amortises the inter-process round trip

# ----------------------------------------------------------------------------- file probes
# Top-level functions of plain arguments: they run in worker processes.


class _Truncated(Exception):
    """The file's end is not where its format says (image_end.truncation's reason)."""


def _probe_image(path: str, check: str) -> tuple[str, int, int]:
    """(sha256, width, height); the file is read once for the hash, the header and its end."""
    with open(path, "rb") as handle:
        data = handle.read()
    with Image.open(io.BytesIO(data)) as image:
        reason = truncation(data, image)
        if reason is not None:
            raise _Truncated(reason)
        if check == "decode" or image.format not in END_CHECKED:
            image.load()
        width, height = image.size
    return hashlib.sha256(data).hexdigest(), width, height


def _probe_mask(path: str) -> tuple[int, int, list[int]]:
    """(width, height, bbox of the pixels > 0), fully decoded, raw values (masks.read_mask)."""
    array = read_mask_values(path)
    return array.shape[1], array.shape[0], mask_bbox(array)


def _write_png_atomic(array: np.ndarray, path: Path) -> None:
    with atomic_file(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _run_task(task: tuple) -> dict:
    """Read what one item needs; errors are returned as text (the caller names file and rule)."""
    image_path, check, mask_path, shapes, known_size = task
    out: dict = {}
    size = known_size
    if image_path is not None:
        try:
            sha, width, height = _probe_image(image_path, check)
            out["image"] = (sha, width, height)
            size = (width, height)
        except _Truncated as error:
            out["image_truncated"] = str(error)
            return out
        except Exception as error:  # PIL and the OS raise many types for bad files
            out["image_error"] = f"{type(error).__name__}: {error}"
            return out
    if mask_path is None:
        return out
    try:
        if shapes is not None:
            if size is not None and size != (shapes.width, shapes.height):
                out["mask"] = (shapes.width, shapes.height, [])  # not written: wrong size
                return out
            array = rasterise(shapes)
            _write_png_atomic(array, Path(mask_path))
            out["mask"] = (shapes.width, shapes.height, mask_bbox(array))
        else:
            out["mask"] = _probe_mask(mask_path)
    except Exception as error:
        out["mask_error"] = f"{type(error).__name__}: {error}"
    return out


def _run_batch(tasks: list[tuple]) -> list[dict]:
    return [_run_task(task) for task in tasks]


def _batches(tasks: list[tuple]) -> Iterator[list[tuple]]:
    for start in range(0, len(tasks), _BATCH):
        yield tasks[start : start + _BATCH]


def _executor(workers: int, parallel: str) -> Executor | None:
    if workers <= 1:
        return None
    if parallel == "thread":
        return ThreadPoolExecutor(max_workers=workers)
    return ProcessPoolExecutor(max_workers=workers)


def _run_tasks(tasks: list[tuple], workers: int, parallel: str, progress: bool) -> list[dict]:
    """Results in task order; a progress bar counts images."""
    results: list[dict] = []
    bar = tqdm(total=len(tasks), desc="reading images", unit="img", disable=not progress)
    executor = _executor(workers, parallel) if len(tasks) > _BATCH else None
    try:
        batches = (
            executor.map(_run_batch, _batches(tasks))
            if executor
            else map(_run_batch, _batches(tasks))
        )
        for batch in batches:
            results += batch
            bar.update(len(batch))
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return results


# ------------------------------------------------------------------------------------ scan


@dataclass
class _Pending:
    """One listed item whose files exist, on its way to a manifest row."""

    listing: Listing
    item: Item
    image_stat: os.stat_result
    mask_file: Path | None
    image_facts: dict | None  # from the cache, then as read
    mask_facts: dict | None  # from the cache, then as read
    result: dict = field(default_factory=dict)  # what a worker read (or the error it met)

    def problem(self, rule: str, file: str, message: str) -> Problem:
        return Problem(self.listing.source, rule, file, message, self.item.image)

    def task(self, image_check: str) -> tuple | None:
        """What a worker must read (the files the cache does not know); None if nothing."""
        need_image = self.image_facts is None
        need_mask = self.mask_file is not None and self.mask_facts is None
        if not (need_image or need_mask):
            return None
        known = None if need_image else (self.image_facts["width"], self.image_facts["height"])
        return (
            str(self.listing.root / self.item.image) if need_image else None,
            image_check,
            str(self.mask_file) if need_mask else None,
            self.item.shapes if need_mask else None,
            known,
        )


def _lookup(listing: Listing, item: Item, cache: FileCache, image_check: str) -> _Pending | Problem:
    """Stat the item's files and look each up in the cache; the Problem of a missing file."""
    root, masks_at = listing.root, listing.masks_at
    try:
        image_stat = (root / item.image).stat()
    except OSError:
        message = f"image {item.image} under {root} does not exist"
        return Problem(listing.source, "missing_image", item.image, message, item.image)
    image_facts = cache.get(listing.source, root, item.image, image_stat, check=image_check)
    if item.mask is None:
        return _Pending(listing, item, image_stat, None, image_facts, None)
    mask_file = masks_at / item.mask
    try:
        mask_stat = mask_file.stat()
    except OSError:
        mask_stat = None
    if mask_stat is None and item.shapes is None:
        message = f"anomalous image {item.image} under {root} has no mask: expected {item.mask}"
        return Problem(listing.source, "image_without_mask", item.image, message, item.image)
    mask_facts = None
    if mask_stat is not None:
        signature = item.shapes.signature() if item.shapes else ""
        mask_facts = cache.get(
            listing.source, masks_at, item.mask, mask_stat, check="mask", signature=signature
        )
    return _Pending(listing, item, image_stat, mask_file, image_facts, mask_facts)


def _record(entry: _Pending, result: dict, cache: FileCache, image_check: str) -> None:
    """Keep what a worker read on ``entry``; an image read is cached at once (its mask, once its
    row is accepted)."""
    listing, item = entry.listing, entry.item
    if "image" in result:
        sha, width, height = result["image"]
        entry.image_facts = {"sha256": sha, "width": width, "height": height}
        cache.put(
            listing.source,
            listing.root,
            item.image,
            entry.image_stat,
            check=image_check,
            **entry.image_facts,
        )
    if "mask" in result:
        width, height, bbox = result["mask"]
        entry.mask_facts = {"width": width, "height": height, "bbox": bbox}
    entry.result = result


def _row(entry: _Pending, cache: FileCache) -> dict | Problem:
    """The manifest row of one item, or the Problem that removes it."""
    listing, item, result = entry.listing, entry.item, entry.result
    if "image_error" in result:
        message = f"unreadable image {item.image} under {listing.root}: {result['image_error']}"
        return entry.problem("unreadable_image", item.image, message)
    if "image_truncated" in result:
        message = f"truncated image {item.image} under {listing.root}: {result['image_truncated']}"
        return entry.problem("truncated_image", item.image, message)
    if "mask_error" in result:
        message = f"unreadable mask {item.mask} under {listing.masks_at}: {result['mask_error']}"
        return entry.problem("unreadable_mask", item.mask or "", message)
    image = entry.image_facts
    assert image is not None
    row = {
        "source": listing.source,
        "category": item.category,
        "image_path": item.image,
        "split": item.split,
        "width": image["width"],
        "height": image["height"],
        "view": item.view,
        "sha256": image["sha256"],
        "label": 0,
    }
    if item.mask is None:
        return row
    problem = _accept_mask(entry, cache)
    if problem is not None:
        return problem
    bbox = entry.mask_facts["bbox"]
    row.update(mask_path=item.mask, label=1, defect_name=item.defect_name, bbox=bbox)
    return row


def _accept_mask(entry: _Pending, cache: FileCache) -> Problem | None:
    """The mask_size Problem of an anomalous item, or None once its mask is cached (and warned
    about when empty)."""
    listing, item, mask, image = entry.listing, entry.item, entry.mask_facts, entry.image_facts
    assert mask is not None and image is not None and entry.mask_file is not None
    size = (mask["width"], mask["height"])
    if size != (image["width"], image["height"]):
        what = "annotation of" if item.shapes else "mask"
        return entry.problem(
            "mask_size",
            item.mask,
            f"{what} {item.mask} is {size[0]}x{size[1]} but image {item.image} is "
            f"{image['width']}x{image['height']} (under {listing.root})",
        )
    if "mask" in entry.result:  # freshly read or written: remember it
        cache.put(
            listing.source,
            listing.masks_at,
            item.mask,
            entry.mask_file.stat(),
            check="mask",
            signature=item.shapes.signature() if item.shapes else "",
            **mask,
        )
    if not mask["bbox"]:
        logger.warning(
            "mask %s of anomalous image %s (%s) is empty; keeping label 1",
            item.mask,
            item.image,
            listing.source,
        )
    return None


def scan(
    listings: Iterable[Listing],
    *,
    cache: FileCache | None = None,
    workers: int = 1,
    parallel: str = "process",
    image_check: str = "header",
    progress: bool = True,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Manifest rows of every listed item that has no problem, and every problem found (the
    listings' own and those found reading files), in listing order.

    ``workers`` <= 1 reads in this process; more reads in a pool of processes (``parallel:
    process``, best for many small files on CPython) or threads. Files whose size and mtime match
    ``cache`` are not opened.
    """
    if image_check not in IMAGE_CHECKS:
        raise ValueError(f"image_check must be one of {IMAGE_CHECKS}, got {image_check!r}")
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    cache = cache if cache is not None else FileCache(None)
    listings = list(listings)
    problems: list[Problem] = [p for listing in listings for p in listing.problems]
    pending: list[_Pending] = []
    for listing in listings:
        for item in listing.items:
            found = _lookup(listing, item, cache, image_check)
            (problems if isinstance(found, Problem) else pending).append(found)
    tasks = [(entry, entry.task(image_check)) for entry in pending]
    tasks = [(entry, task) for entry, task in tasks if task is not None]
    results = _run_tasks([task for _, task in tasks], workers, parallel, progress)
    for (entry, _), result in zip(tasks, results, strict=True):
        _record(entry, result, cache, image_check)
    rows = []
    for entry in pending:
        row = _row(entry, cache)
        (problems if isinstance(row, Problem) else rows).append(row)
    return coerce_manifest(rows), problems


def read_listing(
    listing: Listing,
    *,
    progress: bool = True,
    workers: int = 1,
    image_check: str = "header",
) -> pd.DataFrame:
    """One listing read in raise mode, no cache: the manifest sorted by category, split and image
    path, or IngestError naming every bad file and its rule."""
    manifest, problems = scan(
        [listing], workers=workers, image_check=image_check, progress=progress
    )
    raise_problems(problems)
    if manifest.empty:
        raise IngestError(f"no images found under {listing.root} ({listing.source})")
    return sort_manifest(manifest, listing)


def sort_manifest(manifest: pd.DataFrame, listing: Listing | None = None) -> pd.DataFrame:
    out = manifest.sort_values(["source", "category", "split", "image_path"], kind="stable")
    out = out.reset_index(drop=True)
    if listing is not None:
        logger.info(
            "read %d %s images (%d anomalous) in %d categories from %s",
            len(out),
            listing.source,
            int(out["label"].sum()),
            out["category"].nunique(),
            listing.root,
        )
    return out
