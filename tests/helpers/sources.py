"""A dataset source read the way ingest reads it: the format registry's lister for a format name
(with the format's fixed options, the entry's options checked), then the shared reading step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from vmad_pipeline.datasets.registry import FORMATS, list_source
from vmad_pipeline.datasets.scan import read_listing


def read_source(
    fmt: str,
    root: Path,
    *,
    source: str | None = None,
    masks_dir: Path | None = None,
    **options: Any,
) -> pd.DataFrame:
    """The manifest of one source of format ``fmt`` (named ``source``, default the format's name)
    under ``root``, in raise mode: IngestError naming every bad file. Formats that rasterise
    masks write them under ``masks_dir/<source>``."""
    if FORMATS[fmt].rasterises and masks_dir is None:
        raise ValueError(f"format {fmt!r} writes masks: pass masks_dir")
    spec = {"name": source or fmt, "format": fmt, "root": str(root), **options}
    listing, _ = list_source(spec, str(root), masks_dir or "")
    return read_listing(listing, progress=False)
