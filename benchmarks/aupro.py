"""Benchmark: exact AUPRO on 1,700 anomaly maps of 256 x 256 on one CPU core.

The data are synthetic but realistic in shape: about a third of the images normal, the others
with a few blob-shaped regions; scores are float32 maps (the predictor's dtype) that are higher
inside the regions, plus noise. Thread pools are limited to one thread (the environment variables
are set before numpy is imported), so the figure is single-core.

    python benchmarks/aupro.py                  # 1,700 maps of 256 x 256, 3 repeats
    python benchmarks/aupro.py --n 200 --repeats 1

Writes benchmarks/results/aupro.json (machine, settings, seconds per repeat and the median) and
prints the median. Also times pixel AUROC / AP and the 200-threshold PRO on the same data.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from vmad_pipeline.metrics import aupro, pixel_ap, pixel_auroc, pro_200_thresholds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_data(n: int, size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        if i % 3:  # two images in three are anomalous, with 1-3 elliptic regions
            for _ in range(int(rng.integers(1, 4))):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = rng.integers(3, size // 8, 2)
                mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
        noise = ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 2)
        maps.append((0.08 * mask + noise).astype(np.float32))  # overlapping classes
        masks.append(mask)
    return masks, maps


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1700)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "aupro.json")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # torch is not needed here; only make sure it does not add threads
        pass
    masks, maps = make_data(args.n, args.size, args.seed)
    seconds, value = [], float("nan")
    for _ in range(args.repeats):
        s, value = timed(aupro, masks, maps)
        seconds.append(round(s, 3))
    others = {}
    for name, fn in (
        ("pixel_auroc", pixel_auroc),
        ("pixel_ap", pixel_ap),
        ("pro_200_thresholds", pro_200_thresholds),
    ):
        s, v = timed(fn, masks, maps)
        others[name] = {"seconds": round(s, 3), "value": round(float(v), 6)}
    result = {
        "command": "python benchmarks/aupro.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": {
            "cpu": platform.machine(),
            "processor": platform.processor() or "unknown",
            "cores_on_machine": os.cpu_count(),
            "threads_used": 1,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "settings": {
            "maps": args.n,
            "size": args.size,
            "pixels": args.n * args.size * args.size,
            "dtype": "float32",
            "fpr_limit": 0.3,
            "definition": "exact AUPRO (MVTec AD 2021), every distinct score a threshold",
        },
        "aupro": {
            "seconds": seconds,
            "median_seconds": statistics.median(seconds),
            "value": round(float(value), 6),
        },
        "other_metrics_same_data": others,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["aupro"]), json.dumps(others))


if __name__ == "__main__":
    main()
