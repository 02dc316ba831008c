"""Benchmark: a product profile of 100 normal images (`kedro run --pipeline profile`).

Issue 25's targets: a profile of 100 normal images builds in <= 10 s and stays <= 50 MB (a
coreset of the references' patches, as PatchCore keeps, not every patch of every image). Needs a
project in which `kedro run` has trained the default model (e.g. /tmp/default/total after
`python benchmarks/default_run.py --total --keep /tmp/default`). The images are one unseen
class's normal training images, each drawn again with its pixels shifted (distinct files).

    python benchmarks/product_profile.py --project /tmp/default/total
    python benchmarks/predict.py --project /tmp/default/total --references bench

Writes benchmarks/results/profile.json; the profile stays in the project as `bench`, for the
predict benchmark with references.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from default_run import REPO, commit, machine, timed
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", required=True, help="a project with a trained model")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--category", default="hex_nut", help="an unseen class of the default")
    args = parser.parse_args()
    project = Path(args.project).resolve()
    sources = sorted((project / "data/01_raw/synthetic" / args.category).glob("train/good/*.png"))
    if not sources:
        raise SystemExit(f"no normal training images of {args.category} under {project}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / args.category
        folder.mkdir()
        for i in range(args.images):
            src = sources[i % len(sources)]
            pixels = np.roll(np.asarray(Image.open(src).convert("RGB")), i // len(sources), 1)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        params = f"profile.name=bench,profile.category={args.category.replace('_', ' ')}"
        params += f",profile.images={folder}"
        load = round(os.getloadavg()[0], 2)  # the 1-minute load average: what else ran
        seconds = timed(["kedro", "run", "--pipeline", "profile", "--params", params], project)
    stored = project / "data/06_models/profiles/bench"
    summary = json.loads((stored / "profile.json").read_text())
    size = sum(f.stat().st_size for f in stored.iterdir())
    result = {
        "machine": machine(),
        "commit": commit(project),  # the code that ran: `kedro run` imports the project's src/
        "date": time.strftime("%F"),
        "load_average_at_start": load,
        "settings": {"images": args.images, "category": args.category, "image_size": 128},
        "build_seconds": summary["meta"]["build_seconds"],
        "run_seconds": seconds,
        "size_mb": round(size / 2**20, 2),
        "n_patches": summary["n_patches"],
        "dim": summary["dim"],
        "threshold": summary["threshold"],
        "note": "build_seconds: the node's features, coreset and leave-one-out scores; "
        "run_seconds: the whole `kedro run` (start-up and model load included)",
    }
    (REPO / "benchmarks/results/profile.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
