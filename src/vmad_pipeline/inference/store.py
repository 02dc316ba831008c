"""Where ``kedro run --pipeline predict`` writes, and what it has done already.

Layout under the store's folder (``data/08_reporting/predictions/`` by default)::

    predictions.jsonl    one JSON object per image, appended as images are done
    masks/<key>.png      the binary mask at the pixel threshold, at the image's own size
    maps/<key>.png       the anomaly map (0..255 = 0..1), at the image's own size
    overlays/<key>.png   the image with the mask in red

Each PNG is written atomically before its line is appended, and a line is flushed to disk
before the next image; a killed run leaves at most a partial last line, which is ignored. A
rerun skips every key already in the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from vmad_pipeline.atomic import atomic_file

LINES = "predictions.jsonl"
KINDS = ("masks", "maps", "overlays")


class PredictionStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def lines(self) -> Path:
        return self.root / LINES

    def records(self) -> list[dict]:
        """Every complete line, in order (a partial last line, from a killed run, is skipped)."""
        if not self.lines.is_file():
            return []
        out = []
        for line in self.lines.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def done(self) -> set[str]:
        return {r["key"] for r in self.records() if "key" in r}

    def write(self, record: dict, pictures: dict[str, np.ndarray] | None = None) -> dict:
        """Write ``pictures`` (kind -> uint8 H x W or H x W x 3) as PNGs, then append ``record``
        with their paths (relative to the store) under ``files``."""
        files = {}
        for kind, array in (pictures or {}).items():
            rel = Path(kind) / f"{record['key']}.png"
            target = self.root / rel
            with atomic_file(target, suffix=".png") as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
            files[kind.rstrip("s")] = rel.as_posix()
        record = {**record, "files": files}
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lines, "a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell():  # a killed run's partial last line stays a line of its own
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write((json.dumps(record) + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        return record
