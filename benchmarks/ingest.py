"""Ingestion throughput: images per second, cold and warm (incremental re-run), on a generated tree.

Writes ``--n`` small PNGs (MVTec layout: 10 classes, 1 in 10 images anomalous with a mask) into a
temporary folder, then times the ingest read step (listing + parallel hash/header/mask reads) cold
(empty cache) and warm (second run, same cache), and records the figures.

    python benchmarks/ingest.py --n 20000 --workers 2 --out benchmarks/results/ingest.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vmad_pipeline.datasets.cache import FileCache
from vmad_pipeline.datasets.mvtec import list_mvtec
from vmad_pipeline.datasets.scan import scan


def build_tree(root: Path, n: int, size: int, classes: int = 10) -> int:
    """``n`` images; every 10th is anomalous (test/defect + ground_truth mask). Returns masks."""
    rng = np.random.default_rng(0)
    masks = 0
    for i in range(n):
        cls = f"class_{i % classes:02d}"
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        if i % 10 == 9:
            path = root / cls / "test/scratch" / f"{i:06d}.png"
            mask = np.zeros((size, size), np.uint8)
            mask[4:12, 6:20] = 255
            gt = root / cls / "ground_truth/scratch" / f"{i:06d}_mask.png"
            gt.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(gt)
            masks += 1
        else:
            split = "train" if i % 10 < 7 else "test"
            path = root / cls / split / "good" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    return masks


def timed_scan(root: Path, cache_path: Path, workers: int, parallel: str) -> tuple[float, int]:
    start = time.perf_counter()
    cache = FileCache(cache_path)
    manifest, problems = scan(
        [list_mvtec(root, source="bench")],
        cache=cache,
        workers=workers,
        parallel=parallel,
        progress=False,
    )
    cache.save()
    seconds = time.perf_counter() - start
    assert not problems, problems[:3]
    return seconds, len(manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--size", type=int, default=32, help="image side, px")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--parallel", choices=["process", "thread"], default="process")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmad-ingest-bench-") as tmp:
        root = Path(tmp) / "tree"
        t0 = time.perf_counter()
        masks = build_tree(root, args.n, args.size)
        build_s = time.perf_counter() - t0
        figures = {}
        for workers in sorted({1, args.workers}):
            cache = Path(tmp) / f"cache_{workers}.parquet"
            cold, rows = timed_scan(root, cache, workers, args.parallel)
            warm, _ = timed_scan(root, cache, workers, args.parallel)
            figures[f"workers_{workers}"] = {
                "cold_s": round(cold, 2),
                "cold_images_per_s": round(rows / cold, 1),
                "warm_s": round(warm, 2),
                "warm_images_per_s": round(rows / warm, 1),
            }
            print(f"workers={workers}: {figures[f'workers_{workers}']}", flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    result = {
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpu": platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "command": "python " + " ".join(sys.argv),
        "settings": {
            "images": args.n,
            "masks": masks,
            "image_size": args.size,
            "format": "png, MVTec layout, 10 classes",
            "image_check": "header",
            "parallel": args.parallel,
        },
        "tree_build_s": round(build_s, 1),
        "figures": figures,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
