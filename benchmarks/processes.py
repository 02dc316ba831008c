"""Benchmark: the tiny preset trained by 1 and by 2 CPU processes (gloo), unseen-class metrics.

Issue 13's target: with ``train.engine.processes=2`` the unseen-class metrics stay within the
seed spread of one process. In a fresh clone with ``conf/presets/tiny/`` in ``conf/local/``: the
data once, then for each seed and process count ``kedro run --pipeline train`` and
``--pipeline evaluate`` (each of 2 processes gets one of the two cores). Runs accumulate in
benchmarks/results/processes.json under ``runs``.

    python benchmarks/processes.py                          # seed 0, 1 and 2 processes
    python benchmarks/processes.py --seeds 1,2 --processes 2   # about 7 minutes a run
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from default_run import REPO, commit, fresh_clone, machine, timed

KEYS = ("image_auroc", "pixel_auroc", "aupro", "answer_balanced_accuracy", "p_yes_auroc")


def outcome(clone: Path, seconds: float) -> dict:
    reports = clone / "data" / "08_reporting"
    metrics = json.loads((reports / "metrics.json").read_text())["mean"]
    summary = json.loads((reports / "training_summary.json").read_text())
    return {
        "metrics": {k: metrics[k] for k in KEYS},
        "processes": summary["processes"],
        "train_seconds": summary["train_seconds"],
        "images_per_s": summary["images_per_s"],
        "run_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    args = parser.parse_args()
    out = REPO / "benchmarks" / "results" / "processes.json"
    result = json.loads(out.read_text()) if out.is_file() else {}  # runs accumulate
    at = commit()
    result.update(machine=machine(), date=time.strftime("%F"))
    result["settings"] = "conf/presets/tiny (900 steps, batch 8), ddp over gloo"
    runs = result.setdefault("runs", {})
    with tempfile.TemporaryDirectory() as tmp:
        clone = fresh_clone(Path(tmp), "processes")
        shutil.copy(clone / "conf/presets/tiny/parameters_train.yml", clone / "conf/local/")
        timed(["kedro", "run", "--pipeline", "train", "--to-nodes", "fit_tokenizer"], clone)  # data
        for seed in args.seeds.split(","):
            for n in args.processes.split(","):
                params = ["--params", f"train.seed={seed},train.engine.processes={n}"]
                seconds = timed(["kedro", "run", "--pipeline", "train", *params], clone)
                seconds += timed(["kedro", "run", "--pipeline", "evaluate"], clone)
                run = outcome(clone, round(seconds, 1))
                runs[f"processes={n},seed={seed}"] = {**run, "commit": at}
                print(seed, n, run, flush=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
