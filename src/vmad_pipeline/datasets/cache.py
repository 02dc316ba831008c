"""The incremental ingest cache: what was learnt from each file, valid while the file is unchanged.

:class:`FileCache` remembers, per (source, root, relative path), the file's size and
``mtime_ns`` and what was learnt from it (hash, size, bbox). A file whose size and mtime are
unchanged is not opened again. Like ``make`` and ``rsync``, this trusts the file system's mtime:
a file rewritten with the same size inside the same mtime tick would be missed (delete the cache
to force a full re-read).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from vmad_pipeline.atomic import atomic_file

logger = logging.getLogger(__name__)

_CACHE_COLUMNS = ["source", "root", "path", "size", "mtime_ns", "check", "signature"]
_CACHE_FACTS = ["sha256", "width", "height", "bbox"]
# The check a record is stored under, and the stored checks that satisfy a requested one.
# "header+end": the header check since it also looks at the file's end (truncated images);
# records of the older "header" check are read again once.
_STORED = {"header": "header+end"}
_SATISFIES = {"header": ("header+end", "decode"), "decode": ("decode",), "mask": ("mask",)}


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
            or rec["check"] not in _SATISFIES.get(check, (check,))
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
            "check": _STORED.get(check, check),
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
