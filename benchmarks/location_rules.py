"""Benchmark: would another rule read the location better from the zero-shot map? (issue 26:
location accuracy 0.617 zero-shot against 0.80.)

On the unseen classes' anomalous test images of projects where `kedro run` has run, each
image's zero-shot map (at the model's input size) gives a location by several rules, each
compared with the true mask's location (the grid cell of its centroid, as the evaluation does):

* ``drawn_mask``: the default, the centroid of the drawn mask without its specks
  (``inference.grounding.drawn_regions``);
* ``peak_part``: the drawn mask's connected part that holds the map's peak;
* ``peak``: the map's highest pixel;
* ``top_<s>``: the drawn mask's pixels within share s of its peak;
* ``weighted_<p>``: the centroid of the drawn mask weighted by the map to the power p.

    python benchmarks/location_rules.py --projects /tmp/refs6/full-0 /tmp/refs6/full-1 /tmp/refs6/full-2

Writes benchmarks/results/location_rules.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from default_run import on_projects
from references_far import trained_project
from scipy import ndimage


def _rules(maps: np.ndarray, regions: np.ndarray) -> dict[str, list[str]]:
    from vmad_pipeline.annotation.geometry import location_phrase
    from vmad_pipeline.inference.grounding import region_location

    def peak_part(m, r):
        labels, n = ndimage.label(r, structure=np.ones((3, 3), bool))
        if n == 0:
            return r
        y, x = np.unravel_index(np.argmax(np.where(r, m, -1)), m.shape)
        return labels == labels[y, x]

    def weighted(m, r, power):
        w = np.where(r, m, 0) ** power
        if w.sum() == 0:
            return region_location(r)
        yy, xx = np.mgrid[: m.shape[0], : m.shape[1]]
        cy, cx = (w * yy).sum() / w.sum() + 0.5, (w * xx).sum() / w.sum() + 0.5
        return location_phrase(cy, cx, *m.shape)

    pairs = list(zip(maps, regions, strict=True))
    out = {
        "drawn_mask": [region_location(r) for r in regions],
        "peak_part": [region_location(peak_part(m, r)) for m, r in pairs],
        "peak": [location_phrase(*np.unravel_index(np.argmax(m), m.shape), *m.shape) for m in maps],
    }
    for share in (0.9, 0.95):
        out[f"top_{share}"] = [
            region_location(r & (m >= share * m[r].max()) if r.any() else r) for m, r in pairs
        ]
    for power in (4, 16):
        out[f"weighted_{power}"] = [weighted(m, r, power) for m, r in pairs]
    return out


def measure(project: Path) -> dict:
    from PIL import Image

    from vmad_pipeline.annotation.geometry import mask_geometry
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.images import load_batch
    from vmad_pipeline.inference.grounding import drawn_regions

    manifest, splits, roots, detector = trained_project(project)
    p = detector.predictor
    rows = manifest[
        (manifest.split == "test")
        & manifest.category.isin(splits["test_classes"])
        & (manifest.label == 1)
    ].reset_index(drop=True)
    images, masks = row_files(rows, roots)
    size = p.image_size
    batch = load_batch(images, None, size)[0]
    maps = np.asarray(
        p.predict(batch, rows.category.tolist(), output_size=size, max_new_tokens=1).maps
    )
    truth = np.array(
        [
            mask_geometry(np.asarray(Image.open(m).convert("L").resize((size, size))) > 127)[
                "location"
            ]
            for m in masks
        ]
    )
    cats = rows.category.to_numpy()
    out = {}
    for rule, found in _rules(maps, drawn_regions(maps)).items():
        right = np.array(found) == truth
        out[rule] = {
            "accuracy": round(float(right.mean()), 4),
            "per_class": {c: round(float(right[cats == c].mean()), 4) for c in np.unique(cats)},
        }
        print(project.name, rule, out[rule], flush=True)
    return out


if __name__ == "__main__":
    on_projects(__doc__, "location_rules", measure)
