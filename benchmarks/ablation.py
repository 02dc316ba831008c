"""Benchmark: the full ablation (`kedro run --pipeline ablation`) from a fresh clone.

Clones the current commit into a temporary folder (no finished cell can be reused), runs the
ablation with the shipped parameters (Tables III and IV, 3 seeds), times it, then runs it a
second time, which must reuse every cell. Writes benchmarks/results/ablation.json (timings,
machine, the per-cell summary) and benchmarks/results/ablation.md (the comparison table).

    python benchmarks/ablation.py                       # ~60 min on 2 CPU cores
    python benchmarks/ablation.py --seeds 0 1           # fewer seeds (~40 min)
    python benchmarks/ablation.py --table table_v       # Table V alone -> results/table_v.*

(`kedro run --params` cannot carry a list with several items, since its commas separate
parameters, so ``--seeds`` writes the clone's conf/local/parameters_ablation.yml.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_run import REPO, commit, fresh_clone, machine, timed  # noqa: E402


def set_seeds(clone: Path, seeds: list[int]) -> None:
    """The shipped ablation block with other seeds, in the clone's conf/local/ (it replaces the
    whole `ablation` key, so the rest is copied)."""
    import yaml

    base = yaml.safe_load((clone / "conf/base/parameters_ablation.yml").read_text())
    base["ablation"]["seeds"] = list(seeds)
    (clone / "conf/local/parameters_ablation.yml").write_text(yaml.safe_dump(base, sort_keys=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="", help="extra `kedro run --params` overrides")
    ap.add_argument("--seeds", type=int, nargs="+", help="instead of the shipped seeds")
    ap.add_argument("--table", help="one table (ablation.only); results named after it")
    args = ap.parse_args()
    cmd = ["kedro", "run", "--pipeline", "ablation"]
    params = [p for p in (args.params, args.table and f"ablation.only=[{args.table}]") if p]
    if params:
        cmd += ["--params", ",".join(params)]
    name = args.table or "ablation"
    at = commit()
    with tempfile.TemporaryDirectory() as tmp:
        clone = fresh_clone(Path(tmp), "ablation")
        if args.seeds:
            set_seeds(clone, args.seeds)
            cmd_text = f"{' '.join(cmd)}  (seeds {args.seeds} in conf/local/)"
        else:
            cmd_text = " ".join(cmd)
        first = timed(cmd, clone)
        second = timed(cmd, clone)  # every cell reused
        reports = clone / "data" / "08_reporting" / "ablation"
        metrics = json.loads((reports / "metrics.json").read_text())
        results = (reports / "results.csv").read_text()
        out = REPO / "benchmarks" / "results"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(reports / "ablation.md", out / f"{name}.md")
        shutil.copy(reports / "ablation.png", out / f"{name}.png")
    result = {
        "command": cmd_text,
        "commit": at,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "ablation_seconds": first,
        "rerun_seconds_all_cells_reused": second,
        "summary": metrics,
        "results_csv": results.splitlines(),
    }
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{name}: {first} s; rerun (all cells reused): {second} s")
    print((out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
