"""Benchmark: `kedro run --pipeline predict` over 1,000 images of the default size (128 px).

Issue 14's target: images/s of prediction on new images on the 2-core CPU, with every output
written (a JSON line, the mask, map and overlay PNGs per image). Needs a project in which
`kedro run` has trained the default model (e.g. the clone `python benchmarks/default_run.py
--total --keep /tmp/default` leaves in /tmp/default/total). The images are the project's
synthetic test images, each drawn again with its pixels shifted (so 1,000 distinct files), in a
plain folder outside the project's data.

    python benchmarks/predict.py --project /tmp/default/total
    python benchmarks/predict.py --project /tmp/default/total --images 200 --batch-size 16
    python benchmarks/predict.py --project /tmp/default/total --references bench   # a profile

Writes benchmarks/results/predict.json (with --references: predict_references.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from default_run import REPO, commit, machine, timed
from PIL import Image


def write_images(project: Path, folder: Path, n: int) -> None:
    sources = sorted((project / "data/01_raw/synthetic").glob("*/test/*/*.png"))
    if not sources:
        raise SystemExit(f"no synthetic test images under {project}: run `kedro run` there first")
    for i in range(n):
        src = sources[i % len(sources)]
        pixels = np.roll(np.asarray(Image.open(src).convert("RGB")), i // len(sources), axis=1)
        out = folder / src.parents[2].name  # <class>/<i>.png: the folder names the object
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", required=True, help="a project with a trained model")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8, help="predict.batch_size")
    parser.add_argument("--references", help="predict.references (e.g. a profile's name)")
    args = parser.parse_args()
    project = Path(args.project).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "line"
        write_images(project, folder, args.images)
        out = project / "data/08_reporting/predictions"
        if out.exists():  # a fresh run, not a resume
            subprocess.run(["rm", "-rf", str(out)], check=True)
        params = f"predict.input={folder},predict.batch_size={args.batch_size}"
        if args.references:
            params += f",predict.references={args.references}"
        load = round(os.getloadavg()[0], 2)  # the 1-minute load average: what else ran
        seconds = timed(["kedro", "run", "--pipeline", "predict", "--params", params], project)
        summary = json.loads((out / "summary.json").read_text())
    result = {
        "machine": machine(),
        "commit": commit(project),  # the code that ran: `kedro run` imports the project's src/
        "date": time.strftime("%F"),
        "load_average_at_start": load,
        "settings": {
            "images": args.images,
            "image_size": "128 x 128 PNG (the synthetic default)",
            "batch_size": args.batch_size,
            "model": "the default `kedro run` model (small preset), fp32 on the CPU",
            "outputs": "JSON line + mask, map, overlay PNG per image",
            "references": args.references,
        },
        "predicted": summary["predicted"],
        "failed": summary["failed"],
        "run_seconds": seconds,
        "images_per_s": summary["images_per_s"],
        "predict_seconds": summary["seconds"],
        "run_images_per_s": round(summary["predicted"] / seconds, 2),
        "note": "images_per_s: the predict node's loop (read, predict, write); run_images_per_s "
        "counts the whole `kedro run` (start-up and model load included)",
    }
    name = "predict_references.json" if args.references else "predict.json"
    path = REPO / "benchmarks/results" / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
