"""Benchmark: the default `kedro run` from a fresh clone, and the time per pipeline.

Clones the current commit into a temporary folder (so nothing cached is reused), then
1. runs `kedro run` once (data generation to registered model) and times it;
2. in a second fresh clone runs the DVC stages one by one in order (`dvc repro NAME`, each
   stage is `kedro run --pipeline NAME --tags NAME`), timing each; then a second
   `dvc repro`, which must find nothing to do, and `dvc metrics show`.
Writes benchmarks/results/default_run.json and prints a markdown table plus the metrics.

    python benchmarks/default_run.py            # both parts (about 2 x the run time)
    python benchmarks/default_run.py --total    # only part 1
    python benchmarks/default_run.py --total --keep /tmp/default   # and keep the clone
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


def commit(checkout: Path = REPO) -> str:
    """The short hash of the checkout's HEAD (this repository's by default)."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True
    ).stdout.strip()


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def on_project(doc: str, name: str, measure, key: str, **fields) -> Path:
    """The main of a benchmark measured on a project where `kedro run` has run: ``--project P``,
    then benchmarks/results/<name>.json = the command, the project's commit (its model's),
    the machine, ``fields`` and ``{key: measure(P)}``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    project = ap.parse_args().project
    result = {
        "command": f"python benchmarks/{name}.py --project <clone after kedro run>",
        "commit": commit(project),
        "machine": machine(),
        **fields,
        key: measure(project),
    }
    path = REPO / "benchmarks" / "results" / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)
    return path


def on_projects(doc: str, name: str, measure) -> Path:
    """The main of a benchmark measured on several projects where `kedro run` has run (one per
    training seed): ``--projects P ...``, then benchmarks/results/<name>.json = the command, this
    checkout's commit (the code measuring), the machine and, per project, its commit (its
    model's) and ``measure(P)``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--projects", type=Path, nargs="+", required=True)
    projects = ap.parse_args().projects
    result = {
        "command": f"python benchmarks/{name}.py --projects <clones after kedro run>",
        "code_commit": commit(REPO),
        "machine": machine(),
        "projects": {str(p): {"commit": commit(p), **measure(p)} for p in projects},
    }
    path = REPO / "benchmarks" / "results" / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)
    return path


def run_total(tmp: Path) -> dict:
    """Part 1: one `kedro run` in a fresh clone, with the metrics it produced."""
    clone = fresh_clone(tmp, "total")
    load = round(os.getloadavg()[0], 2)  # the 1-minute load average: what else was running
    seconds = timed(["kedro", "run"], clone)
    reports = clone / "data" / "08_reporting"
    metrics = json.loads((reports / "metrics.json").read_text())
    summary = json.loads((reports / "training_summary.json").read_text())
    return {
        "kedro_run_seconds": seconds,
        "load_average_at_start": load,
        "metrics": metrics["mean"],
        "reference_metrics": json.loads((reports / "reference_metrics.json").read_text())["mean"],
        "per_class": metrics["per_class"],
        "train_seconds": summary["train_seconds"],
    }


def run_stages(tmp: Path) -> dict:
    """Part 2: the DVC stages one by one in a fresh clone, a second repro, the metrics."""
    clone = fresh_clone(tmp, "stages")
    seconds = {p: timed(["dvc", "repro", p], clone) for p in PIPELINES}
    again = subprocess.run(["dvc", "repro"], cwd=clone, env=ENV, capture_output=True, text=True)
    shown = subprocess.run(
        ["dvc", "metrics", "show"], cwd=clone, env=ENV, capture_output=True, text=True
    )
    return {
        "pipeline_seconds": seconds,
        "second_dvc_repro": again.stdout.strip().splitlines()[-1:],
        "dvc_metrics_show": shown.stdout.strip().splitlines(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", action="store_true", help="only part 1 (the single `kedro run`)")
    ap.add_argument("--stages", action="store_true", help="only part 2 (keeps part 1's figures)")
    ap.add_argument("--keep", type=Path, help="clone into this (new) folder and keep it")
    args = ap.parse_args()
    out = REPO / "benchmarks" / "results" / "default_run.json"
    result = json.loads(out.read_text()) if args.stages and out.is_file() else {}
    result.update(commit=commit(), machine=machine(), date=time.strftime("%Y-%m-%d"))
    with tempfile.TemporaryDirectory() as tmp:
        parent = args.keep or Path(tmp)
        parent.mkdir(parents=True, exist_ok=True)
        if not args.stages:
            result.update(run_total(parent))
        if not args.total:
            result.update(run_stages(parent))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| step | seconds |\n| --- | --- |")
    print(f"| `kedro run` (all) | {result.get('kedro_run_seconds')} |")
    for p, s in result.get("pipeline_seconds", {}).items():
        print(f"| `dvc repro {p}` | {s} |")
    print(json.dumps(result.get("metrics"), indent=2))
    print("\n".join(result.get("second_dvc_repro", [])))


if __name__ == "__main__":
    main()
