"""The scan: an incremental re-run opens no unchanged file, and worker pools give the same rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from helpers.trees import build_mpdd_like, build_vision, write_image
from PIL import Image

from vmad_pipeline.datasets.cache import FileCache
from vmad_pipeline.datasets.mvtec import list_mvtec
from vmad_pipeline.datasets.scan import scan
from vmad_pipeline.datasets.vision import list_vision


class _OpenCounter:
    """Counts files opened in this process (``open`` audit events) under a folder.

    Audit hooks cannot be removed; the hook is idle unless ``watch`` is set."""

    watch: str | None = None
    opened: list[str] = []

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.watch and event == "open" and isinstance(args[0], str | Path):
            path = str(args[0])
            if path.startswith(cls.watch):
                cls.opened.append(path)


sys.addaudithook(_OpenCounter.hook)


def _count_opens(root: Path, fn):
    _OpenCounter.watch, _OpenCounter.opened = str(root), []
    try:
        return fn(), list(_OpenCounter.opened)
    finally:
        _OpenCounter.watch = None


def test_rerun_reads_no_unchanged_file(tmp_path: Path) -> None:
    inputs = tmp_path / "in"  # every image, mask and written mask; the cache lives outside
    build_mpdd_like(inputs / "m", "hole")
    build_vision(inputs / "vision")
    cache_path = tmp_path / "cache.parquet"

    def listings() -> list:
        return [
            list_mvtec(inputs / "m", source="m"),
            list_vision(inputs / "vision", source="vis", mask_root=inputs / "masks"),
        ]

    def run_and_save():
        cache = FileCache(cache_path)
        out = scan(listings(), cache=cache, workers=2, parallel="thread", progress=False)
        cache.save()
        return out

    def read(opened: list[str]) -> list[str]:
        return [p for p in opened if not p.endswith(".json")]  # COCO JSONs list the items

    (cold, problems), opened = _count_opens(inputs, run_and_save)
    assert problems == [] and len(cold) == 7
    assert any(p.endswith("000.png") for p in opened) and any(p.endswith("a.jpg") for p in opened)
    (warm, problems), opened = _count_opens(inputs, run_and_save)
    assert read(opened) == [] and problems == [] and warm.equals(cold)
    # A rewritten file (new mtime) is read again, and only it.
    touched = inputs / "m/bracket_black/test/good/000.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(touched)
    (third, _), opened = _count_opens(inputs, run_and_save)
    assert read(opened) == [str(touched)]
    by_path = third.set_index("image_path")["sha256"]
    assert (
        by_path["bracket_black/test/good/000.png"]
        != cold.set_index("image_path").loc["bracket_black/test/good/000.png", "sha256"]
    )
    # The check is sound: without the cache the same scan opens every image and mask again.
    _, opened = _count_opens(inputs, lambda: scan(listings(), progress=False))
    assert len(read(opened)) >= 7


def test_process_pool_gives_the_same_rows(tmp_path: Path) -> None:
    root = tmp_path / "m"
    for i in range(40):  # more than one batch
        write_image(root / f"c/train/good/{i:03d}.png")
    serial, _ = scan([list_mvtec(root)], progress=False)
    pooled, _ = scan([list_mvtec(root)], workers=2, parallel="process", progress=False)
    decoded, _ = scan([list_mvtec(root)], workers=2, image_check="decode", progress=False)
    assert serial.equals(pooled) and serial.equals(decoded)
