"""Benchmark: the model with k normal references, beside the nearest-normal-patch baseline and the
transductive reference, over seeds; and the reference cue's parts one by one (the ablation).

For each seed (and each variant) a fresh clone of HEAD runs the default `kedro run` with
`train.seed=<seed>` and `evaluate.shots: [0, 1, 2, 4, 8]` (the default is [0, 4]), then its
metrics.json (the model: k = 0 at the top level, `shots.<k>` and `shots.batch`),
shots_metrics.json (the baseline on the same reference draws) and reference_metrics.json (the
transductive reference) are read. Writes benchmarks/results/references.{json,md}.

    python benchmarks/references.py --seeds 0 1 2 [--keep /tmp/refs]
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

import numpy as np
import pandas as pd
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


def run_one(seed: int, variant: str, parent: Path, shots: str = SHOTS) -> dict:
    clone = fresh_clone(parent, f"{variant}-{seed}")
    params_file = clone / "conf" / "base" / "parameters_evaluate.yml"
    text = params_file.read_text()
    if "  shots: [0, 4]\n" not in text:
        raise SystemExit("conf/base/parameters_evaluate.yml: no `shots: [0, 4]` line to widen")
    params_file.write_text(text.replace("  shots: [0, 4]\n", f"  shots: {shots}\n"))
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
    answers = pd.read_csv(reports / "answers.csv")  # the evaluated images, in order
    floor = (metrics.get("decision") or {}).get("threshold")
    for k, part in metrics["shots"].items():
        model[k] = {"mean": part["mean"], "decision": part["decision"]}
        if part.get("loo_scores") and part.get("scores"):  # other rules on the same scores
            model[k]["rules"] = rule_decisions(answers, part, floor)
    return {
        "seed": seed,
        "variant": variant,
        "commit": commit(clone),  # the clone's, not the checkout's: it may have moved since
        "seconds": round(time.perf_counter() - start, 1),
        "model": model,
        "baseline": {
            k: {"mean": v["mean"], "decision": v["decision"]} for k, v in baseline["shots"].items()
        },
        "transductive": transductive["mean"],
    }


RULES = ("loo_max", "prediction@0.9", "prediction@0.95")


def rule_decisions(answers: pd.DataFrame, part: dict, floor: float | None) -> dict:
    """FPR / recall of each rule in :data:`RULES` on a run's stored scores and leave-one-out
    scores (``metrics.json`` ``shots.<k>``), each threshold floored at the calibrated one, as
    the evaluation does."""
    from vmad_pipeline.evaluation.threshold_rules import references_threshold

    labels, cats = answers["label"].to_numpy(), answers["category"].to_numpy()
    scores = np.asarray(part["scores"])
    out = {}
    for rule in RULES:
        cut = {}
        for cls, loo in part["loo_scores"].items():
            value = references_threshold(np.asarray(loo), rule)
            cut[cls] = None if value is None else max(value, floor or value)
        keep = np.array([cut.get(c) is not None for c in cats])
        flagged = np.array([bool(keep[i] and scores[i] >= cut[c]) for i, c in enumerate(cats)])
        normal, defect = keep & (labels == 0), keep & (labels == 1)
        out[rule] = {
            "fpr": float(flagged[normal].mean()) if normal.any() else None,
            "recall": float(flagged[defect].mean()) if defect.any() else None,
        }
    return out


def rules_table(runs: list[dict]) -> str:
    """The references-only rules on the model's stored scores, mean FPR / recall over runs."""
    lines = ["| k | " + " | ".join(RULES) + " |", "|---" * (len(RULES) + 1) + "|"]
    for k in ("1", "2", "4", "8"):
        found = [r["model"].get(k, {}).get("rules") for r in runs]
        found = [f for f in found if f]
        if not found:
            continue
        cells = []
        for rule in RULES:
            fpr = [f[rule]["fpr"] for f in found if f[rule]["fpr"] is not None]
            rec = [f[rule]["recall"] for f in found if f[rule]["recall"] is not None]
            ok = fpr and rec
            cells.append(f"{statistics.mean(fpr):.3f} / {statistics.mean(rec):.3f}" if ok else "–")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ""
    head = "FPR / recall of each references-only rule on the same scores:\n\n"
    return head + "\n".join(lines) + "\n\n"


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
    ap.add_argument("--shots", default=SHOTS, help="evaluate.shots of each run")
    ap.add_argument("--keep", type=Path, help="keep the trained clones here (<variant>-<seed>)")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        parent = args.keep or Path(tmp)
        parent.mkdir(parents=True, exist_ok=True)
        for variant in args.variants:
            for seed in args.seeds:
                runs.append(run_one(seed, variant, parent, args.shots))
                print(json.dumps(runs[-1]["model"].get("4", {}).get("mean", {})), flush=True)
    info = {
        "commit": ", ".join(sorted({r["commit"] for r in runs})),  # one, unless HEAD moved
        "command": "python benchmarks/references.py "
        + " ".join(
            ["--seeds", *map(str, args.seeds), "--variants", *args.variants, "--out", args.out]
            + ([] if args.shots == SHOTS else ["--shots", f"'{args.shots}'"])
        ),
        "shots": args.shots,
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
            + rules_table(part)
        )
    (out / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
