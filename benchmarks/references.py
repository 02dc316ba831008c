"""Benchmark: the model with k normal references, beside the nearest-normal-patch baseline and the
transductive reference, over seeds; and the reference cue's parts one by one (the ablation).

For each seed (and each variant) a fresh clone of HEAD runs the default `kedro run` with
`train.seed=<seed>` and `evaluate.shots: [0, 1, 2, 4, 8]` (the default is [0, 4]), then its
metrics.json (the model: k = 0 at the top level, `shots.<k>` and `shots.batch`),
shots_metrics.json (the baseline on the same reference draws) and reference_metrics.json (the
transductive reference) are read. Writes benchmarks/results/references.{json,md}.

    python benchmarks/references.py --seeds 0 1 2
    python benchmarks/references.py --seeds 0 --variants no_evidence no_mask_prompt --out ablation
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from default_run import ENV, REPO, commit, fresh_clone

SHOTS = "[0, 1, 2, 4, 8]"
VARIANTS = {  # the cue's parts (train.model.references), each switched off alone
    "full": "",
    "no_evidence": "train.model.references.evidence=false",
    "no_mask_prompt": "train.model.references.mask_prompt=false",
    "no_shared_paste": "train.shared_paste_prob=0.0",
}
MODEL = ("image_auroc", "pixel_auroc", "aupro", "p_yes_auroc", "answer_balanced_accuracy")
BASELINE = ("image_auroc", "pixel_auroc", "aupro")


def run_one(seed: int, variant: str, parent: Path) -> dict:
    clone = fresh_clone(parent, f"{variant}-{seed}")
    params_file = clone / "conf" / "base" / "parameters_evaluate.yml"
    text = params_file.read_text()
    if "  shots: [0, 4]\n" not in text:
        raise SystemExit("conf/base/parameters_evaluate.yml: no `shots: [0, 4]` line to widen")
    params_file.write_text(text.replace("  shots: [0, 4]\n", f"  shots: {SHOTS}\n"))
    params = ",".join(p for p in (f"train.seed={seed}", VARIANTS[variant]) if p)
    start = time.perf_counter()
    proc = subprocess.run(
        ["kedro", "run", "--params", params], cwd=clone, env=ENV, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    reports = clone / "data" / "08_reporting"
    metrics = json.loads((reports / "metrics.json").read_text())
    baseline = json.loads((reports / "shots_metrics.json").read_text())
    transductive = json.loads((reports / "reference_metrics.json").read_text())
    model = {"0": {"mean": metrics["mean"], "decision": metrics.get("decision")}}
    for k, part in metrics["shots"].items():
        model[k] = {"mean": part["mean"], "decision": part["decision"]}
    return {
        "seed": seed,
        "variant": variant,
        "seconds": round(time.perf_counter() - start, 1),
        "model": model,
        "baseline": {
            k: {"mean": v["mean"], "decision": v["decision"]} for k, v in baseline["shots"].items()
        },
        "transductive": transductive["mean"],
    }


def _stat(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _decision(runs: list[dict], side: str, k: str) -> str:
    found = [r[side].get(k, {}).get("decision") for r in runs]
    found = [d for d in found if d and "fpr" in d]
    if not found:
        return "–"
    fpr = statistics.mean(d["fpr"] for d in found)
    recall = statistics.mean(d["recall"] for d in found)
    return f"{fpr:.3f} / {recall:.3f}"


def table(runs: list[dict]) -> str:
    keys = ["0", "1", "2", "4", "8", "batch"]
    head = (
        "| k | model image AUROC | pixel AUROC | AUPRO | P(yes) AUROC | answer bal. acc. | "
        "FPR / recall (references-only) | baseline image AUROC | pixel AUROC | AUPRO | "
        "FPR / recall |\n" + "|---" * 11 + "|\n"
    )
    rows = []
    for k in keys:
        model = [_stat([r["model"].get(k, {}).get("mean", {}).get(m) for r in runs]) for m in MODEL]
        base = [
            _stat([r["baseline"].get(k, {}).get("mean", {}).get(m) for r in runs]) for m in BASELINE
        ]
        rows.append(
            f"| {k} | "
            + " | ".join(model)
            + f" | {_decision(runs, 'model', k)} | "
            + " | ".join(base)
            + f" | {_decision(runs, 'baseline', k)} |"
        )
    trans = [_stat([r["transductive"].get(m) for r in runs]) for m in BASELINE]
    rows.append(
        "| transductive reference (no labels) | – | – | – | – | – | – | "
        + " | ".join(trans)
        + " | – |"
    )
    return head + "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["full"], choices=sorted(VARIANTS))
    ap.add_argument("--out", default="references", help="results/<out>.{json,md}")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            for seed in args.seeds:
                runs.append(run_one(seed, variant, Path(tmp)))
                print(json.dumps(runs[-1]["model"].get("4", {}).get("mean", {})), flush=True)
    info = {
        "commit": commit(),
        "command": "python benchmarks/references.py "
        + " ".join(
            ["--seeds", *map(str, args.seeds), "--variants", *args.variants, "--out", args.out]
        ),
        "shots": SHOTS,
        "runs": runs,
    }
    out = REPO / "benchmarks" / "results"
    (out / f"{args.out}.json").write_text(json.dumps(info, indent=1))
    text = f"# {args.out} (commit {info['commit']}, `{info['command']}`)\n\n"
    for variant in args.variants:
        part = [r for r in runs if r["variant"] == variant]
        text += (
            f"## {variant} (seeds {', '.join(str(r['seed']) for r in part)})\n\n"
            + table(part)
            + "\n"
        )
    (out / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
