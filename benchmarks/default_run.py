"""Benchmark: the default `kedro run` from a fresh clone, and the time per pipeline.

Clones the current commit into a temporary folder (so nothing cached is reused), then
1. runs `kedro run` once (data generation to registered model) and times it;
2. in a second fresh clone runs the DVC stages one by one in order (`dvc repro NAME`, each
   stage is `kedro run --pipeline NAME --tags NAME`), timing each; then a second
   `dvc repro`, which must find nothing to do, and `dvc metrics show`.
Writes benchmarks/results/default_run.json and prints a markdown table plus the metrics.

    python benchmarks/default_run.py            # both parts (about 2 x the run time)
    python benchmarks/default_run.py --total    # only part 1
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

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("ingest", "annotate", "split", "train", "evaluate")
ENV = {
    **os.environ,
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
}


def fresh_clone(parent: Path, name: str) -> Path:
    dest = parent / name
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    return dest


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(cmd)} failed")
    return round(seconds, 1)


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", action="store_true", help="only the single `kedro run`")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    result: dict = {"commit": commit, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        clone = fresh_clone(Path(tmp), "total")
        result["kedro_run_seconds"] = timed(["kedro", "run"], clone)
        metrics = json.loads((clone / "data" / "08_reporting" / "metrics.json").read_text())
        summary = json.loads(
            (clone / "data" / "08_reporting" / "training_summary.json").read_text()
        )
        result["metrics"] = metrics["mean"]
        result["per_class"] = metrics["per_class"]
        result["train_seconds"] = summary["train_seconds"]
        if not args.total:
            clone = fresh_clone(Path(tmp), "stages")
            result["pipeline_seconds"] = {
                p: timed(["kedro", "run", "--pipeline", p, "--tags", p], clone) for p in PIPELINES
            }
    out = REPO / "benchmarks" / "results" / "default_run.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"| step | seconds |\n| --- | --- |\n| `kedro run` (all) | {result['kedro_run_seconds']} |"
    )
    for p, s in result.get("pipeline_seconds", {}).items():
        print(f"| `dvc repro {p}` | {s} |")
    print(json.dumps(result["metrics"], indent=2))


if __name__ == "__main__":
    main()
