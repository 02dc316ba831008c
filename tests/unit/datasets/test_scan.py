"""The scan: an incremental re-run opens no unchanged file, and worker pools give the same rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.trees import build_mpdd_like, build_vision, write_image
from PIL import Image

from vmad_pipeline.datasets.cache import FileCache
from vmad_pipeline.datasets.listing import RULES
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


def _save(path: Path, fmt: str, size: int = 32) -> bytes:
    """A random image in ``fmt``, written to ``path``; its bytes."""
    rng = np.random.default_rng(len(fmt))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, format=fmt)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("TIFF", "tif")]
)
@pytest.mark.parametrize("check", ["header", "decode"])
def test_truncated_image_is_refused_by_its_end(tmp_path: Path, fmt: str, ext: str, check: str):
    """The default header check reads every byte for the hash anyway: a file whose body was
    cut off (the format's end marker or declared size is missing) is a truncated_image."""
    root = tmp_path / "m"
    whole = root / f"c/train/good/000.{ext}"
    cut = root / f"c/train/good/001.{ext}"
    data = _save(whole, fmt)
    _save(cut, fmt)
    cut.write_bytes(cut.read_bytes()[: len(data) - 200])  # the header is intact
    manifest, problems = scan([list_mvtec(root)], image_check=check, progress=False)
    assert list(manifest["image_path"]) == [f"c/train/good/000.{ext}"]
    assert [(p.rule, p.file, p.image_path) for p in problems] == [
        ("truncated_image", f"c/train/good/001.{ext}", f"c/train/good/001.{ext}")
    ]
    assert "truncated" in problems[0].message and str(root) in problems[0].message
    assert problems[0].rule in RULES


def test_end_marker_followed_by_padding_is_accepted(tmp_path: Path) -> None:
    root = tmp_path / "m"
    for name, fmt in (("000.jpg", "JPEG"), ("001.png", "PNG")):
        path = root / "c/train/good" / name
        path.write_bytes(_save(path, fmt) + b"\x00" * 16)  # zero padding after EOI / IEND
    manifest, problems = scan([list_mvtec(root)], progress=False)
    assert problems == [] and len(manifest) == 2


def test_cache_of_an_older_header_check_is_not_trusted(tmp_path: Path) -> None:
    """Facts cached by a header check that did not look at the end are read again once."""
    root = tmp_path / "m"
    path = root / "c/train/good/000.png"
    data = _save(path, "PNG")
    path.write_bytes(data[:-200])
    cache_path = tmp_path / "cache.parquet"
    stat = path.stat()
    old = FileCache(cache_path)
    old.put(
        "m", root, "c/train/good/000.png", stat, check="header", sha256="x", width=32, height=32
    )
    old.save()
    _, problems = scan([list_mvtec(root)], cache=FileCache(cache_path), progress=False)
    assert [p.rule for p in problems] == ["truncated_image"]
