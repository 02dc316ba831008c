"""Benchmark: the trained default model on a tree the generator did not draw (transfer).

Writes the transfer tree of tests/helpers/transfer.py (other object families, textures and
defect types: gear, resistor, tablet, marble, perforated_sheet, knit; bubble, cut, dent,
foreign_object, fold) and evaluates the model of a project that has run `kedro run` on it:

    python benchmarks/default_run.py --total --keep /tmp/default
    python benchmarks/transfer.py --project /tmp/default/total

(`kedro run --pipeline evaluate --params evaluate.dataset.root=<tree>,evaluate.dataset.name=transfer`;
reports in <project>/data/08_reporting/external/transfer/). Writes
benchmarks/results/transfer.{json,md}: the model's metrics and the training-free reference's,
per class and as the class mean; the model with k references from the tree's own train/good
(`--train-good` of them a class, 8 by default) and the baseline on the same draws.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from default_run import REPO, commit, machine, timed  # noqa: E402
from helpers.transfer import write_transfer_tree  # noqa: E402

from vmad_pipeline.evaluation.report import HEADLINE  # noqa: E402

# the headline metrics but the object's name (the default answers name none)
MODEL = tuple(m for m in HEADLINE if m != "object_name_accuracy")


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(model: dict, reference: dict) -> str:
    lines = ["| class | " + " | ".join(MODEL) + " | reference image / pixel AUROC, AUPRO |"]
    lines.append("|---" * (len(MODEL) + 2) + "|")
    rows = {**model["per_class"], "**mean**": model["mean"]}
    refs = {**reference["per_class"], "**mean**": reference["mean"]}
    for cls, m in rows.items():
        r = refs.get(cls, {})
        ref = " / ".join(_cell(r.get(k)) for k in ("image_auroc", "pixel_auroc", "aupro"))
        lines.append(f"| {cls} | " + " | ".join(_cell(m.get(k)) for k in MODEL) + f" | {ref} |")
    return "\n".join(lines) + "\n"


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _shot(part: dict) -> dict:
    """One k's mean, per-class image / pixel AUROC and AUPRO, and decision."""
    keep = ("image_auroc", "pixel_auroc", "aupro")
    per_class = {c: {k: m.get(k) for k in keep} for c, m in part.get("per_class", {}).items()}
    return {"mean": part["mean"], "per_class": per_class, "decision": part.get("decision")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, required=True, help="a project after `kedro run`")
    ap.add_argument("--tree", type=Path, help="where to write the tree (default: in --project)")
    ap.add_argument(
        "--train-good", type=int, default=8, help="normal training images a class (references)"
    )
    ap.add_argument(
        "--params",
        default="",
        help="more evaluate parameters, e.g. the baseline at the model's input side: "
        "evaluate.references.image_size=128,evaluate.references.stride=4",
    )
    ap.add_argument("--out", default="transfer", help="results/<out>.{json,md}")
    args = ap.parse_args()
    tree = args.tree or args.project / "data" / "01_raw" / "transfer"
    counts = write_transfer_tree(tree, n_train=args.train_good)
    params = f"evaluate.dataset.root={tree.resolve()},evaluate.dataset.name={args.out}"
    params += f",{args.params}" if args.params else ""
    seconds = timed(["kedro", "run", "--pipeline", "evaluate", "--params", params], args.project)
    reports = args.project / "data" / "08_reporting" / "external" / args.out
    model = json.loads((reports / "metrics.json").read_text())
    reference = json.loads((reports / "reference_metrics.json").read_text())
    at = commit(args.project)
    out = REPO / "benchmarks" / "results"
    result = {
        "command": "python benchmarks/transfer.py --project <clone after kedro run>"
        + (f" --params {args.params} --out {args.out}" if args.params else ""),
        "commit": at,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "images_per_class": counts,
        "evaluate_seconds": seconds,
        "model": {"mean": model["mean"], "per_class": model["per_class"]},
        "settings": model.get("settings"),
        "reference": {"mean": reference["mean"], "per_class": reference["per_class"]},
        "train_good": args.train_good,
        # the model with k references of each class (its own train/good) and in batch mode,
        # and the nearest-normal-patch baseline on the same draws
        "model_shots": {
            k: _shot(v)
            for k, v in model.get("shots", {}).items()
            if isinstance(v, dict) and "mean" in v
        },
        "baseline_shots": {
            k: _shot(v) for k, v in _json(reports / "shots_metrics.json").get("shots", {}).items()
        },
    }
    (out / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(model, reference)
    (out / f"{args.out}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
