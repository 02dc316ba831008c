"""Benchmark: the mask-guided defect generator's default training and a generated tree, timed on
this machine (docs/generation.md).

Reads the default run's manifest and split (``kedro run --pipeline split`` after ingest, or any
earlier ``kedro run``), trains the generator with ``conf/base/parameters_generate.yml``'s
settings (never from the cache: a temporary cache folder), paints the default tree and scores
its fidelity (KID needs the EfficientNet-Lite0 package), then writes
benchmarks/results/generator.{json,md} with the machine, the commit and the settings::

    python benchmarks/generator.py            # about 5 minutes on 2 CPU cores
    python benchmarks/generator.py --pipeline # + the whole pipeline in a fresh clone (~10 min)

``--pipeline`` also runs, in a fresh clone of the current commit, the default ``kedro run`` (the
detector) and then ``kedro run --pipeline generate`` (timed), and copies its reports (fidelity,
the detector's image AUROC on generated vs real defects, the overview figure) to
benchmarks/results/generation/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_inputs():
    import pandas as pd
    import yaml

    data = REPO / "data"
    manifest = pd.read_parquet(data / "02_intermediate" / "manifest.parquet")
    splits = json.loads((data / "05_model_input" / "splits.json").read_text())
    roots = json.loads((data / "02_intermediate" / "dataset_roots.json").read_text())
    params = yaml.safe_load((REPO / "conf/base/parameters_generate.yml").read_text())["generate"]
    return manifest, splits, roots, params


def machine() -> dict:
    import torch

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "commit": commit,
        "machine": {
            "cpu": platform.machine(),
            "processor": platform.processor(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def run_pipeline(out: Path) -> dict:
    """The default run, then the generate pipeline, in a fresh clone; its reports copied to
    ``out``. Returns the timings."""
    import shutil

    sys.path.insert(0, str(REPO / "benchmarks"))
    from default_run import fresh_clone, timed

    with tempfile.TemporaryDirectory() as tmp:
        clone = fresh_clone(Path(tmp), "generation")
        default_s = timed(["kedro", "run"], clone)
        generate_s = timed(["kedro", "run", "--pipeline", "generate"], clone)
        reports = clone / "data" / "08_reporting" / "generation"
        out.mkdir(parents=True, exist_ok=True)
        for name in (
            "fidelity.json",
            "fidelity.md",
            "detector.json",
            "detector.md",
            "overview.png",
        ):
            shutil.copy(reports / name, out / name)
    timings = {"default_run_seconds": default_s, "generate_pipeline_seconds": generate_s}
    (out / "timings.json").write_text(json.dumps({**machine(), **timings}, indent=2) + "\n")
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "generator"))
    parser.add_argument("--pipeline", action="store_true", help="also the pipeline, fresh clone")
    args = parser.parse_args(argv)
    if args.pipeline:
        print(run_pipeline(REPO / "benchmarks" / "results" / "generation"))
    os.chdir(REPO)  # the dataset roots are relative to the project
    from vmad_pipeline.configs.base import to_dict
    from vmad_pipeline.configs.generate import parse_generate_params
    from vmad_pipeline.splitting import split_rows
    from vmad_pipeline.synthesis.fit import generator_stage
    from vmad_pipeline.synthesis.run import generate, score_fidelity

    manifest, splits, roots, params = load_inputs()
    cfg = parse_generate_params(params)
    train_rows = split_rows(manifest, splits)[0]
    with tempfile.TemporaryDirectory() as tmp:
        gcfg = dataclasses.replace(cfg.generator, cache_dir=tmp, progress=False)
        start = time.perf_counter()
        stage = generator_stage(train_rows, roots, gcfg)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        tree, index, _ = generate(stage, train_rows, train_rows, roots, cfg)
        generate_s = time.perf_counter() - start
        from vmad_pipeline.datasets.synthetic import write_tree

        write_tree(tree, Path(tmp) / "tree")
        start = time.perf_counter()
        report, md, _ = score_fidelity(str(Path(tmp) / "tree"), index, train_rows, roots, cfg)
        fidelity_s = time.perf_counter() - start
    losses = stage["losses"]
    result = {
        **machine(),
        "settings": to_dict(gcfg) | {"per_type": cfg.per_type, "masks": cfg.masks},
        "defects_trained_on": int((train_rows["label"] == 1).sum()),
        "defect_types": stage["types"],
        "train_seconds": round(train_s, 1),
        "seconds_per_step": round(train_s / gcfg.steps, 3),
        "loss_first_10": round(sum(losses[:10]) / len(losses[:10]), 4),
        "loss_last_10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "generated_images": len(index),
        "generate_seconds": round(generate_s, 1),
        "fidelity_seconds": round(fidelity_s, 1),
        "fidelity": report["per_type"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Defect generator: training and generation time",
        "",
        f"Commit {result['commit'][:10]}, {result['machine']['cores']} cores "
        f"({result['machine']['torch_threads']} torch threads), torch {result['machine']['torch']}.",
        "",
        f"- training: {gcfg.steps} steps of {gcfg.batch_size} crops of {gcfg.crop} px "
        f"(width {gcfg.width}, depth {gcfg.depth}) on {result['defects_trained_on']} real "
        f"defects: **{result['train_seconds']} s** ({result['seconds_per_step']} s/step); loss "
        f"{result['loss_first_10']} -> {result['loss_last_10']}",
        f"- painting {len(index)} defects at {gcfg.image_size} px: {result['generate_seconds']} s",
        f"- fidelity (PSNR, KID on EfficientNet-Lite0 features): {result['fidelity_seconds']} s",
        "",
        md.split("\n", 2)[2],
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    sys.exit(main())
