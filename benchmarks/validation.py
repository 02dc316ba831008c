"""Benchmark: Great Expectations validation of a 20,000-row manifest with real files.

Generates a tree of small PNGs (4 sources x 10 classes x 500 images by default; half of the
test images anomalous, each with a 0/255 mask), builds its manifest directly (sha256, sizes, bbox),
then times ``validate_manifest`` (every rule: file existence, image headers, masks decoded once,
duplicates, per-source counts, the GE suite) and, separately, the GE suite alone.

    python benchmarks/validation.py                       # 20,000 rows, 128 px
    python benchmarks/validation.py --per-class 50 --size 64

Writes benchmarks/results/validation.json and prints the timings.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vmad_pipeline.datasets.manifest import coerce_manifest
from vmad_pipeline.datasets.masks import mask_bbox
from vmad_pipeline.datasets.validation import validate_manifest

RESULTS = Path(__file__).parent / "results" / "validation.json"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def build_tree(base: Path, sources: int, classes: int, per_class: int, size: int):
    rng = np.random.default_rng(0)
    rows, roots = [], {}
    ramp = np.linspace(0, 255, size, dtype=np.uint8)[None, :, None]
    for s in range(sources):
        source = f"src{s}"
        root = base / source
        roots[source] = str(root)
        for c in range(classes):
            category = f"class{c}"
            for i in range(per_class):
                split = "train" if i < per_class // 2 else "test"
                anomalous = split == "test" and i % 2 == 0
                folder = "defect" if anomalous else "good"
                rel = f"{category}/{split}/{folder}/{i:04d}.png"
                # a smooth image (small PNG) with a random corner patch (a unique hash)
                image = np.broadcast_to(ramp, (size, size, 3)).copy()
                image[:4, :4] = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
                data = _png(image)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
                mask_rel, bbox = "", []
                if anomalous:
                    mask = np.zeros((size, size), np.uint8)
                    y, x = rng.integers(0, size // 2, 2)
                    mask[y : y + size // 4, x : x + size // 4] = 255
                    mask_rel = f"{category}/ground_truth/defect/{i:04d}_mask.png"
                    (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / mask_rel).write_bytes(_png(mask))
                    bbox = mask_bbox(mask)
                rows.append(
                    {
                        "source": source,
                        "category": category,
                        "image_path": rel,
                        "mask_path": mask_rel,
                        "label": int(anomalous),
                        "defect_name": "defect" if anomalous else "",
                        "bbox": bbox,
                        "split": split,
                        "width": size,
                        "height": size,
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )
    return coerce_manifest(rows), roots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest, roots = build_tree(
            Path(tmp), args.sources, args.classes, args.per_class, args.size
        )
        generate = time.perf_counter() - start
        params = {"progress": False, "workers": args.workers}
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = validate_manifest(manifest, roots, params)
            seconds.append(time.perf_counter() - start)
        assert report["success"], [r for r in report["results"] if not r["success"]]
        # The GE suite alone: no file on disk (every file rule then fails, which costs the same).
        start = time.perf_counter()
        validate_manifest(manifest, {}, params)
        no_files = time.perf_counter() - start
    result = {
        "command": "python benchmarks/validation.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": {
            "cpu": platform.machine(),
            "cores_on_machine": os.cpu_count(),
            "python": platform.python_version(),
        },
        "settings": {
            "rows": len(manifest),
            "masks": int(manifest["label"].sum()),
            "image_size": args.size,
            "sources": args.sources,
            "workers": args.workers,
            "rules": len(report["results"]),
        },
        "generate_tree_seconds": round(generate, 1),
        "validate_seconds": [round(s, 2) for s in seconds],
        "validate_without_files_seconds": round(no_files, 2),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
