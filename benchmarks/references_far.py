"""Benchmark: how far an image is from references of its own product, and of another one.

For every unseen class of a project where `kedro run` has run, 4 references are drawn from its
normal training images (the evaluation's draw); every test image of every unseen class is
compared with them. The ratio of the image's median patch distance to the references over the
references' own (leave-one-out) median distance is reported for the same class (normal and
anomalous images) and for other classes: `inference.references.FAR` must separate them.

    python benchmarks/references_far.py --project /tmp/default/total

Writes benchmarks/results/references_far.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from default_run import REPO, commit, machine

from vmad_pipeline.configs import WeightsConfig
from vmad_pipeline.configs.evaluate import parse_evaluate_params
from vmad_pipeline.datasets.manifest import row_files
from vmad_pipeline.evaluation.shots import draw_references, reference_pool
from vmad_pipeline.images import load_batch
from vmad_pipeline.inference.references import FAR, reference_set
from vmad_pipeline.inference.service import Detector
from vmad_pipeline.models.checkpoint import Checkpoint

CUTOFFS = (1.75, 2.0, 2.25, 2.5, 3.0)


def unseen_tests(manifest: pd.DataFrame, splits: dict, roots: dict, size: int):
    """The test rows of the split's unseen classes (index reset) and their images at ``size``."""
    tests = manifest[(manifest.split == "test") & manifest.category.isin(splits["test_classes"])]
    tests = tests.reset_index(drop=True)
    return tests, load_batch(row_files(tests, roots)[0], None, size)[0]


def evaluate_config(project: Path):
    """The project's evaluate parameters, parsed."""
    import yaml

    params = yaml.safe_load((project / "conf/base/parameters_evaluate.yml").read_text())
    return parse_evaluate_params(params["evaluate"])


def trained_project(project: Path):
    """A project after `kedro run`: its manifest, split, dataset roots and the detector of its
    model, scoring by the project's evaluate parameters."""
    import yaml

    data = project / "data"
    manifest = pd.read_parquet(data / "02_intermediate/manifest.parquet")
    splits = json.loads((data / "05_model_input/splits.json").read_text())
    roots = json.loads((data / "02_intermediate/dataset_roots.json").read_text())
    evaluate = yaml.safe_load((project / "conf/base/parameters_evaluate.yml").read_text())
    detector = Detector.from_checkpoint(
        Checkpoint(data / "06_models/vmad"),
        WeightsConfig(),
        parse_evaluate_params(evaluate["evaluate"]),
    )
    return manifest, splits, roots, detector


def spread(values: list[float]) -> dict:
    """How many values, and their minimum, median and maximum."""
    v = np.array(values)
    return {
        "n": len(v),
        "min": float(v.min()),
        "median": float(np.median(v)),
        "max": float(v.max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    manifest, splits, roots, detector = trained_project(args.project)
    p = detector.predictor
    tests, images = unseen_tests(manifest, splits, roots, p.image_size)
    drawn = draw_references(reference_pool(manifest, tests), args.k, 0)
    same, other, anomalous = [], [], []
    for cls, rows in drawn.items():
        refs = load_batch(row_files(rows, roots)[0], None, p.image_size)[0]
        found = reference_set(p, refs, cls, rule="loo_max")
        pred = p.predict(
            images,
            [cls] * len(images),
            output_size=8,
            references=[found.memory] * len(images),
            max_new_tokens=1,
        )
        ratio = pred.reference_distance / found.normal_distance
        mine = (tests.category == cls).to_numpy()
        same += ratio[mine & (tests.label == 0).to_numpy()].tolist()
        anomalous += ratio[mine & (tests.label == 1).to_numpy()].tolist()
        other += ratio[~mine].tolist()

    def summary(values):
        v = np.array(values)
        return {
            **spread(values),
            "share_beyond_far": float((v > FAR).mean()),
            # the shares past other cut-offs: what choosing FAR trades
            "share_beyond": {str(c): float((v > c).mean()) for c in CUTOFFS},
        }

    result = {
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%F"),
        "k": args.k,
        "far": FAR,
        "same_product_normal": summary(same),
        "same_product_anomalous": summary(anomalous),
        "other_product": summary(other),
    }
    (REPO / "benchmarks/results/references_far.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
