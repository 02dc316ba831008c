"""Turn readers' listings into manifest rows: read files in parallel, reuse a cache, collect bad input.

A reader only *lists* (:class:`Listing`: one :class:`Item` per image, plus the :class:`Problem`s it
found in the tree or its metadata). :func:`scan` then reads what must be read, in parallel
(``concurrent.futures``), and builds one row per item; it never keeps an image in memory after
its row is built, so memory grows with the number of rows, not with the pixels.

What is checked per file, and why:

* **Images: bytes hashed, header parsed** (``image_check: header``, the default). The SHA-256
  needs every byte anyway; the header gives width and height and proves the file is an image of a
  known format. Fully decoding every image costs 5-20x more (JPEG, large PNGs) and the training and
  evaluation loaders decode each image again in any case, naming the file if it fails. A truncated
  image body passes a header check: ``image_check: decode`` decodes every image, for a first
  ingestion of a dataset you do not trust.
* **Masks: fully decoded**, always: the bounding box needs the pixels, and the size must equal the
  image's.

Incremental re-runs: :class:`FileCache` remembers, per (source, root, relative path), the file's
size and ``mtime_ns`` and what was learnt from it (hash, size, bbox). A file whose size and mtime
are unchanged is not opened again. Like ``make`` and ``rsync``, this trusts the file system's
mtime: a file rewritten with the same size inside the same mtime tick would be missed (delete the
cache to force a full re-read).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from vmad_pipeline.datasets.manifest import IngestError, coerce_manifest, mask_bbox
from vmad_pipeline.io.atomic import atomic_file

logger = logging.getLogger(__name__)

# rule id -> the rule, in words (reported with every problem)
RULES: dict[str, str] = {
    "unreadable_image": "every image file must open as an image",
    "unreadable_mask": "every mask file must decode as an image",
    "image_without_mask": "an anomalous image needs its mask",
    "mask_without_image": "every mask belongs to an image of the mirrored folder",
    "mask_size": "a mask has its image's width and height",
    "missing_image": "every image that metadata lists must exist",
    "malformed_metadata": "metadata files (JSON, CSV) parse and have the documented fields",
    "unknown_defect": "every defect name maps to a taxonomy type (conf/base/taxonomy.yml)",
}
IMAGE_CHECKS = ("header", "decode")
PARALLEL = ("process", "thread")
_BATCH = 32  # items per task sent to a worker: amortises the inter-process round trip


@dataclass(frozen=True)
class Problem:
    """One piece of bad input: the file, the rule it breaks, and the row it removes (if any)."""

    source: str
    rule: str
    file: str  # relative to the source root (or its mask root), or the metadata file
    message: str
    image_path: str = ""  # the manifest row this problem removes; "" if it concerns no row

    def as_dict(self) -> dict[str, str]:
        return {
            "source": self.source,
            "rule": self.rule,
            "rule_text": RULES[self.rule],
            "file": self.file,
            "image_path": self.image_path,
            "message": self.message,
        }


@dataclass(frozen=True)
class Shapes:
    """Polygons (and uncompressed RLEs) to rasterise into one mask (COCO sources), at the size the
    annotation file declares."""

    polygons: tuple[tuple[float, ...], ...]  # each (x0, y0, x1, y1, ...) in pixels
    width: int
    height: int
    rles: tuple[tuple[int, ...], ...] = ()  # COCO uncompressed RLE counts, column-major

    def signature(self) -> str:
        text = json.dumps(
            [self.width, self.height, self.polygons, self.rles], separators=(",", ":")
        )
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Item:
    """One image as a reader lists it; no file has been read yet."""

    category: str
    split: str
    image: str  # posix, relative to the source root
    mask: str | None = None  # posix, relative to the mask root; None for a normal image
    defect_name: str = ""
    view: str = ""
    shapes: Shapes | None = None  # set when ``mask`` is to be rasterised from polygons


@dataclass
class Listing:
    """What a reader found under one source root."""

    source: str
    root: Path
    mask_root: Path | None = None  # where masks live when not under ``root`` (rasterised masks)
    items: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, rule: str, file: str, message: str, image_path: str = "") -> None:
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}")
        self.problems.append(Problem(self.source, rule, file, message, image_path))

    @property
    def masks_at(self) -> Path:
        return self.mask_root or self.root


def raise_problems(problems: list[Problem] | list[dict[str, str]], limit: int = 40) -> None:
    """IngestError listing every problem as ``[rule] message`` (identical lines once, the first
    ``limit``, then a count); nothing if there is none."""
    if not problems:
        return
    found = [p.as_dict() if isinstance(p, Problem) else p for p in problems]
    lines = list(dict.fromkeys(f"[{p['rule']}] {p['message']}" for p in found))
    more = len(lines) - limit
    raise IngestError(
        f"{len(problems)} bad input(s); nothing was written (set ingest.on_error: quarantine to "
        "ingest the rest and report these):\n"
        + "\n".join(lines[:limit] + ([f"... and {more} more"] if more > 0 else []))
    )


# ------------------------------------------------------------------------------------- cache

_CACHE_COLUMNS = ["source", "root", "path", "size", "mtime_ns", "check", "signature"]
_CACHE_FACTS = ["sha256", "width", "height", "bbox"]


class FileCache:
    """Facts learnt from files, keyed by (source, root, relative path), valid while the file's
    size and ``mtime_ns`` (and, for rasterised masks, the polygons' signature) are unchanged.

    Stored as parquet at ``path`` (None: an in-memory cache that is never saved). An unreadable
    cache file is ignored with a warning: a cache never stops a run.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        self._records: dict[tuple[str, str, str], dict] = {}
        self._scanned: set[tuple[str, str]] = set()  # (source, root) pairs seen this run
        self._seen: set[tuple[str, str, str]] = set()
        if self.path is not None and self.path.is_file():
            try:
                frame = pd.read_parquet(self.path)
                for rec in frame.to_dict("records"):
                    rec["bbox"] = [int(v) for v in rec["bbox"]]
                    self._records[(rec["source"], rec["root"], rec["path"])] = rec
            except Exception as error:  # a corrupt cache is only a slower run
                logger.warning("ignoring unreadable ingest cache %s: %s", self.path, error)
                self._records = {}

    def __len__(self) -> int:
        return len(self._records)

    def _visit(self, source: str, root: Path, rel: str) -> tuple[str, str, str]:
        """The record key of a file, noted as seen (records of unseen files of a scanned source
        are dropped on save)."""
        key = (source, str(root), rel)
        self._scanned.add(key[:2])
        self._seen.add(key)
        return key

    def get(
        self,
        source: str,
        root: Path,
        rel: str,
        stat: os.stat_result,
        *,
        check: str,
        signature: str = "",
    ) -> dict | None:
        rec = self._records.get(self._visit(source, root, rel))
        if (
            rec is None
            or rec["size"] != stat.st_size
            or rec["mtime_ns"] != stat.st_mtime_ns
            or rec["signature"] != signature
            or (check == "decode" and rec["check"] == "header")
        ):
            return None
        return rec

    def put(
        self,
        source: str,
        root: Path,
        rel: str,
        stat: os.stat_result,
        *,
        check: str,
        signature: str = "",
        **facts: object,
    ) -> None:
        self._records[self._visit(source, root, rel)] = {
            "source": source,
            "root": str(root),
            "path": rel,
            "size": int(stat.st_size),
            "mtime_ns": int(stat.st_mtime_ns),
            "check": check,
            "signature": signature,
            "sha256": str(facts.get("sha256", "")),
            "width": int(facts.get("width", 0)),
            "height": int(facts.get("height", 0)),
            "bbox": [int(v) for v in facts.get("bbox", [])],
        }

    def save(self) -> None:
        """Write atomically; entries of scanned roots whose files were not seen are dropped."""
        if self.path is None:
            return
        records = [
            rec
            for key, rec in self._records.items()
            if key[:2] not in self._scanned or key in self._seen
        ]
        frame = pd.DataFrame(records, columns=_CACHE_COLUMNS + _CACHE_FACTS)
        frame = frame.astype(
            {"size": "int64", "mtime_ns": "int64", "width": "int64", "height": "int64"}
        )
        with atomic_file(self.path) as tmp:
            frame.to_parquet(tmp, index=False)


# ----------------------------------------------------------------------------- file probes
# Top-level functions of plain arguments: they run in worker processes.


def _probe_image(path: str, check: str) -> tuple[str, int, int]:
    """(sha256, width, height); the file is read once for both the hash and the header."""
    with open(path, "rb") as handle:
        data = handle.read()
    with Image.open(io.BytesIO(data)) as image:
        if check == "decode":
            image.load()
        width, height = image.size
    return hashlib.sha256(data).hexdigest(), width, height


def _probe_mask(path: str) -> tuple[int, int, list[int]]:
    """(width, height, bbox of the pixels > 0), fully decoded."""
    with Image.open(path) as image:
        array = np.asarray(image)
    return array.shape[1], array.shape[0], mask_bbox(array)


def rasterise(shapes: Shapes) -> np.ndarray:
    """The polygons (and RLEs) filled with 255 on a 0 background, (H, W) uint8.

    PIL's polygon fill is used (no pycocotools here): a pixel is set when its centre-sampled
    integer position lies inside or on the polygon's outline, so the polygon
    [2,1, 5,1, 5,3, 2,3] sets columns 2..5 of rows 1..3 (edges included).
    """
    canvas = Image.new("L", (shapes.width, shapes.height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in shapes.polygons:
        points = list(zip(polygon[0::2], polygon[1::2], strict=True))
        if len(points) >= 3:
            draw.polygon(points, fill=255, outline=255)
        elif points:  # a degenerate polygon (a point or a segment) still marks its pixels
            draw.line(points, fill=255)
    array = np.array(canvas)
    if shapes.rles:
        from vmad_pipeline.annotation.coco import rle_to_mask  # the project's one RLE codec

        size = [shapes.height, shapes.width]
        for counts in shapes.rles:
            array[rle_to_mask({"counts": list(counts), "size": size}) > 0] = 255
    return array


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


# ------------------------------------------------------------------------------------ scan


@dataclass
class _Pending:
    listing: Listing
    item: Item
    image_stat: os.stat_result
    mask_file: Path | None
    image_facts: dict | None  # from the cache
    mask_facts: dict | None  # from the cache
    result: dict = field(default_factory=dict)  # what a worker read (or the error it met)


def _executor(workers: int, parallel: str) -> Executor | None:
    if workers <= 1:
        return None
    if parallel == "thread":
        return ThreadPoolExecutor(max_workers=workers)
    return ProcessPoolExecutor(max_workers=workers)


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
    tasks: list[tuple] = []
    task_of: list[int] = []  # pending index of each task
    for listing in listings:
        root, masks_at = listing.root, listing.masks_at
        for item in listing.items:
            image = root / item.image
            try:
                image_stat = image.stat()
            except OSError:
                listing_problem = Problem(
                    listing.source,
                    "missing_image",
                    item.image,
                    f"image {item.image} under {root} does not exist",
                    item.image,
                )
                problems.append(listing_problem)
                continue
            image_facts = cache.get(listing.source, root, item.image, image_stat, check=image_check)
            mask_file = mask_facts = None
            if item.mask is not None:
                mask_file = masks_at / item.mask
                signature = item.shapes.signature() if item.shapes else ""
                try:
                    mask_stat = mask_file.stat()
                except OSError:
                    mask_stat = None
                if mask_stat is None and item.shapes is None:
                    problems.append(
                        Problem(
                            listing.source,
                            "image_without_mask",
                            item.image,
                            f"anomalous image {item.image} under {root} has no mask: expected "
                            f"{item.mask}",
                            item.image,
                        )
                    )
                    continue
                if mask_stat is not None:
                    mask_facts = cache.get(
                        listing.source,
                        masks_at,
                        item.mask,
                        mask_stat,
                        check="mask",
                        signature=signature,
                    )
            pending.append(_Pending(listing, item, image_stat, mask_file, image_facts, mask_facts))
            need_image = image_facts is None
            need_mask = mask_file is not None and mask_facts is None
            if need_image or need_mask:
                known = None if need_image else (image_facts["width"], image_facts["height"])
                tasks.append(
                    (
                        str(image) if need_image else None,
                        image_check,
                        str(mask_file) if need_mask else None,
                        item.shapes if need_mask else None,
                        known,
                    )
                )
                task_of.append(len(pending) - 1)
    results = _run_tasks(tasks, workers, parallel, progress)
    for index, result in zip(task_of, results, strict=True):
        entry = pending[index]
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
    rows = []
    for entry in pending:
        listing, item, root = entry.listing, entry.item, entry.listing.root
        result = entry.result
        if "image_error" in result:
            problems.append(
                Problem(
                    listing.source,
                    "unreadable_image",
                    item.image,
                    f"unreadable image {item.image} under {root}: {result['image_error']}",
                    item.image,
                )
            )
            continue
        if "mask_error" in result:
            problems.append(
                Problem(
                    listing.source,
                    "unreadable_mask",
                    item.mask or "",
                    f"unreadable mask {item.mask} under {listing.masks_at}: {result['mask_error']}",
                    item.image,
                )
            )
            continue
        image, mask = entry.image_facts, entry.mask_facts
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
        if item.mask is not None:
            assert mask is not None and entry.mask_file is not None
            size = (mask["width"], mask["height"])
            if size != (image["width"], image["height"]):
                what = "annotation of" if item.shapes else "mask"
                problems.append(
                    Problem(
                        listing.source,
                        "mask_size",
                        item.mask,
                        f"{what} {item.mask} is {size[0]}x{size[1]} but image {item.image} is "
                        f"{image['width']}x{image['height']} (under {root})",
                        item.image,
                    )
                )
                continue
            if "mask" in result:  # freshly read or written: remember it
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
            row.update(
                mask_path=item.mask, label=1, defect_name=item.defect_name, bbox=mask["bbox"]
            )
        rows.append(row)
    return coerce_manifest(rows), problems


def _batches(tasks: list[tuple]) -> Iterator[list[tuple]]:
    for start in range(0, len(tasks), _BATCH):
        yield tasks[start : start + _BATCH]


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
