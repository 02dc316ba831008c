"""Benchmark: the type head with and without its novelty gate (issue 26: name more known types
right while leaving types no training class has unnamed; docs/words.md, "The novelty gate").

On a project where `kedro run` has run, the head is fitted as training fits it
(``training.type_head.fit_type_head``, the model's tower, the training classes' true masks),
with ``novelty_gate`` off and on (on: its gated rule, as regions drawn against references are
named). Reported for each: the choice on held-out training classes
and types (what the thresholds were chosen on), the unseen classes' defects named from their
true masks (accuracy with abstentions wrong, precision, share named) and the share of the
transfer tree's defects (types no training class has; tests/helpers/transfer.py, true masks)
left unnamed. The drawn masks' figures are the evaluation's (benchmarks/references.py).

    python benchmarks/type_gate.py --project <clone after kedro run>

Writes benchmarks/results/type_gate.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from default_run import on_project
from references_far import trained_project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _named(head, model, images, masks) -> np.ndarray:
    """The head's names for the regions, by its gated rule where it has a gate (as for regions
    drawn against references)."""
    from vmad_pipeline.images import to_model_inputs

    size = model.config.vision.image_size
    x = torch.cat([to_model_inputs(images[s : s + 16], size)[0] for s in range(0, len(images), 16)])
    desc = head.descriptors(model.vision, x, (masks > 0).float())
    names, _ = head.classify(desc, gated=[head.gate is not None] * len(desc))
    return np.array(names, object)


def _transfer(project: Path, size: int):
    """The transfer tree's defect images and masks (written into the project if missing)."""
    from helpers.transfer import write_transfer_tree

    from vmad_pipeline.images import load_batch

    tree = project / "data" / "01_raw" / "transfer"
    if not tree.is_dir():
        write_transfer_tree(tree, n_train=8)
    images = sorted(p for p in tree.glob("*/test/*/*.png") if p.parent.name != "good")
    masks = [
        tree / p.parts[-4] / "ground_truth" / p.parent.name / f"{p.stem}_mask.png" for p in images
    ]
    return load_batch(images, masks, size)[:2]


def measure(project: Path) -> dict:
    from vmad_pipeline.configs.train import TypeHeadConfig
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.images import load_batch
    from vmad_pipeline.training.type_head import fit_type_head, typed_rows

    manifest, splits, roots, detector = trained_project(project)
    model = detector.predictor.model
    size = model.config.vision.image_size
    unseen = typed_rows(
        manifest[manifest.category.isin(splits["test_classes"]) & (manifest.split == "test")]
    )
    images, masks = load_batch(*row_files(unseen, roots), size)[:2]
    truth = unseen.defect_type.to_numpy()
    far_images, far_masks = _transfer(project, size)
    train = manifest[manifest.category.isin(splits["train_classes"])]
    out = {}
    for gate in (False, True):
        head = fit_type_head(model, train, roots, TypeHeadConfig(novelty_gate=gate))
        names = _named(head, model, images, masks)
        named = names != None  # noqa: E711 (an object array's element-wise test)
        right = names == truth
        out["gate" if gate else "probability alone"] = {
            "min_probability": head.min_probability
            if head.gate is None
            else head.gate.min_probability,
            "max_novelty": None if head.gate is None else round(head.gate.max_novelty, 4),
            "held_out": head.meta["held_out_classes_gated"] or head.meta["held_out_classes"],
            "unseen_true_masks": {
                "accuracy": round(float(right.mean()), 4),
                "precision": round(float(right[named].mean()), 4) if named.any() else None,
                "named_share": round(float(named.mean()), 4),
            },
            "transfer_true_masks_unnamed": round(
                float((_named(head, model, far_images, far_masks) == None).mean()),  # noqa: E711
                4,
            ),
        }
        print(gate, out["gate" if gate else "probability alone"], flush=True)
    out["images"] = {"unseen_typed": len(unseen), "transfer_defects": len(far_images)}
    return out


if __name__ == "__main__":
    on_project(__doc__, "type_gate", measure, "heads")
