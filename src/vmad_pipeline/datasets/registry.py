"""Format name -> reader: the one table that ``ingest.sources[].format`` is looked up in, and the
configured sources read through it (their roots, their listings, one scan over all of them).

MPDD, WFDD and MAD-Sim are the MVTec layout (the MVTec reader already pairs ``<stem>_mask.png`` or
``<stem>.png`` masks by stem within the mirrored folder), so they are registered on it; they differ
in their taxonomy map only.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vmad_pipeline.configs.base import check
from vmad_pipeline.configs.ingest import SOURCE_KEYS, IngestConfig
from vmad_pipeline.datasets.btad import list_btad
from vmad_pipeline.datasets.cache import FileCache
from vmad_pipeline.datasets.coco import list_coco
from vmad_pipeline.datasets.folder import list_folder
from vmad_pipeline.datasets.listing import Listing, Problem
from vmad_pipeline.datasets.manifest import mask_root_key
from vmad_pipeline.datasets.mvtec import list_mvtec
from vmad_pipeline.datasets.mvtec3d import list_mvtec3d
from vmad_pipeline.datasets.realiad import list_realiad
from vmad_pipeline.datasets.scan import scan
from vmad_pipeline.datasets.visa import list_visa, list_visa_1cls
from vmad_pipeline.datasets.vision import list_vision

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Format:
    lister: Callable[..., Listing]
    taxonomy: str = ""  # the dataset key of its raw-name map in conf/base/taxonomy.yml
    options: Mapping[str, Any] = field(default_factory=dict)  # fixed options of this format
    rasterises: bool = (
        False  # writes masks under <masks_dir>/<source> (dataset_roots "<source>:masks")
    )

    def option_names(self) -> list[str]:
        """Options a source entry may set: the lister's keyword arguments."""
        fixed = {"source", "mask_root", *self.options}
        params = inspect.signature(self.lister).parameters.values()
        return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in fixed]


FORMATS: dict[str, Format] = {
    "mvtec": Format(list_mvtec, "mvtec"),
    "mpdd": Format(list_mvtec, "mpdd"),
    "wfdd": Format(list_mvtec, "wfdd"),
    "madsim": Format(list_mvtec, "madsim"),
    "visa": Format(list_visa, "visa"),
    "visa_1cls": Format(list_visa_1cls, "visa"),
    "btad": Format(list_btad, "btad"),
    "realiad": Format(list_realiad, "realiad"),
    "mvtec3d": Format(list_mvtec3d, "mvtec3d"),
    "folder": Format(list_folder),
    "vision": Format(list_vision, "vision", rasterises=True),
    "coco": Format(list_coco, rasterises=True),
}


def source_options(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A source entry's reader options (the keys other than :data:`SOURCE_KEYS`, plus the format's
    fixed ones); ConfigError naming ``where`` for an unknown format or option, listing the valid
    ones."""
    check(
        spec["format"] in FORMATS,
        f"{where}.format",
        f"unknown format {spec['format']!r}; known: {', '.join(FORMATS)}",
    )
    fmt = FORMATS[spec["format"]]
    options = {k: v for k, v in spec.items() if k not in SOURCE_KEYS}
    allowed = fmt.option_names()
    unknown = sorted(set(options) - set(allowed))
    check(
        not unknown,
        where,
        f"unknown option(s) {unknown} for format {spec['format']!r}; "
        f"allowed: {', '.join(allowed) or 'none'}",
    )
    return {**options, **fmt.options}


def source_roots(sources: Sequence[Mapping[str, Any]], synthetic_root: str) -> dict[str, str]:
    """Source name -> dataset root; the root ``synthetic`` means the generated tree. Checks each
    entry's format and reader options (ConfigError naming ``ingest.sources[i]``); the entries'
    names and roots are :class:`~vmad_pipeline.configs.ingest.IngestConfig`'s to check."""
    roots = {}
    for i, src in enumerate(sources):
        source_options(src, f"ingest.sources[{i}]")
        roots[src["name"]] = synthetic_root if src["root"] == "synthetic" else str(src["root"])
    return roots


def list_source(
    spec: Mapping[str, Any], root: str, masks_dir: str | Path, where: str = "source"
) -> tuple[Listing, dict[str, str]]:
    """The listing of one configured source, and its ``dataset_roots`` entries (name -> root,
    and "<name>:masks" -> its mask root for formats that rasterise masks)."""
    fmt = FORMATS[spec["format"]]
    options = source_options(spec, where)
    roots = {spec["name"]: str(root)}
    if fmt.rasterises:
        mask_root = Path(masks_dir) / spec["name"]
        options["mask_root"] = mask_root
        roots[mask_root_key(spec["name"])] = str(mask_root)
    return fmt.lister(root, source=spec["name"], **options), roots


def read_sources(
    config: IngestConfig, roots: Mapping[str, str]
) -> tuple[pd.DataFrame, dict[str, str], list[Problem]]:
    """Read every configured source (``roots``: :func:`source_roots`) with its format's reader,
    in one scan: the rows (in source order, then by category, split and path), the dataset roots
    (with "<source>:masks" for rasterised masks) and every problem found.

    Files unchanged since the last run (size, mtime) are not read again: the cache at
    ``config.cache`` holds what was learnt from them. The cache is saved even when problems were
    found: it records facts about files, not ingestion results, so the re-run after a fix reads
    only the files that changed.
    """
    listings, all_roots = [], {}
    for i, src in enumerate(config.sources):
        where = f"ingest.sources[{i}]"
        listing, src_roots = list_source(src, roots[src["name"]], config.masks_dir, where)
        listings.append(listing)
        all_roots.update(src_roots)
    cache = FileCache(config.cache)
    manifest, problems = scan(
        listings,
        cache=cache,
        workers=config.workers or os.cpu_count() or 1,
        parallel=config.parallel,
        image_check=config.image_check,
        progress=config.progress,
    )
    cache.save()
    order = {src["name"]: i for i, src in enumerate(config.sources)}
    manifest = (
        manifest.assign(_order=manifest["source"].map(order))
        .sort_values(["_order", "category", "split", "image_path"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )
    logger.info(
        "read %d images from %d source(s); %d problem(s)",
        len(manifest),
        len(listings),
        len(problems),
    )
    return manifest, all_roots, problems


def taxonomy_keys(sources: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Source name -> the dataset key of its raw-name map in the taxonomy (its format's, else
    the source name)."""
    return {s["name"]: FORMATS[s["format"]].taxonomy or s["name"] for s in sources}


def defect_maps(sources: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Source name -> its own ``defect_map``, for the sources that declare one."""
    return {s["name"]: s["defect_map"] for s in sources if s.get("defect_map")}
