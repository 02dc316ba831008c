"""The generate pipeline's steps as library calls on manifest rows and dataset roots: paint a
tree, score its fidelity, score a detector on it. Images are read through ``images`` at the
generator's side."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from vmad_pipeline.configs.generate import GenerateConfig, GeneratorConfig
from vmad_pipeline.datasets.manifest import row_files
from vmad_pipeline.images import load_batch, load_mask, load_rgb
from vmad_pipeline.synthesis import fidelity
from vmad_pipeline.synthesis.figures import overview_figure
from vmad_pipeline.synthesis.fit import at_size, defect_rows, generator_stage, load_generator
from vmad_pipeline.synthesis.render import Painter, Pool, generate_tree

log = logging.getLogger(__name__)


def painter_from_stage(stage: dict) -> Painter:
    """The painter of a ``synthesis.fit.generator_stage`` result."""
    return Painter(load_generator(stage), stage["types"], stage.get("key", ""))


def training_generator(
    rows: pd.DataFrame,
    roots: dict[str, str],
    synthesis: str,
    cfg: GeneratorConfig,
    side: int,
    stage: dict | None = None,
    *,
    cached_only: bool = False,
) -> tuple[dict, Painter | None]:
    """(generator stage, painter) for training with ``train.synthesis``: ({}, None) under
    ``paste``; else ``stage`` when given (the train_generator node's), or the cached generator
    trained on ``rows``' defects at the training images' ``side`` (SAM's input; trained here
    unless ``cached_only``: the ranks of a run over several machines read the one generator)."""
    if synthesis == "paste":
        return {}, None
    if not stage:
        stage = generator_stage(rows, roots, at_size(cfg, side), cached_only=cached_only)
    return stage, painter_from_stage(stage)


def make_pool(normal_rows: pd.DataFrame, real_rows: pd.DataFrame, roots, size: int) -> Pool:
    """Normal images (label 0 of ``normal_rows``) and real defect masks of ``real_rows``."""
    normals = normal_rows[normal_rows["label"] == 0].sort_values(["category", "image_path"])
    if normals.empty:
        raise ValueError("no normal image to paint defects on")
    images, _ = load_batch(row_files(normals, roots)[0], None, size)
    defects = defect_rows(real_rows)
    _, masks = load_batch(*row_files(defects, roots), size)
    return Pool(
        normals=images,
        normal_classes=list(normals["category"]),
        normal_paths=list(normals["image_path"]),
        masks=masks,
        mask_classes=list(defects["category"]),
        mask_types=list(defects["defect_type"]),
    )


def generate(
    stage: dict, normal_rows: pd.DataFrame, real_rows: pd.DataFrame, roots, cfg: GenerateConfig
):
    """The tree ({relative path: array}), its index and the overview figure."""
    painter = painter_from_stage(stage)
    pool = make_pool(normal_rows, real_rows, roots, stage["config"]["image_size"])
    tree, index = generate_tree(pool, painter, cfg, progress=cfg.progress)
    examples: dict[str, list] = {}
    for row in index.itertuples():
        items = examples.setdefault(row.defect_type, [])
        if len(items) < cfg.overview:
            items.append((tree[row.base], tree[row.image], tree[row.mask]))
    log.info(
        "painted %d defects of %d types on %d classes",
        len(index),
        len(painter.types),
        index["category"].nunique(),
    )
    return tree, index, overview_figure(examples)


def read_generated(root: str, index: pd.DataFrame) -> dict:
    """The generated images, their masks and the normal images they were painted on."""
    root_p = Path(root)
    return {
        "images": [load_rgb(root_p / p, _side(root_p / p)) for p in index["image"]],
        "bases": [load_rgb(root_p / p, _side(root_p / p)) for p in index["base"]],
        "masks": [load_mask(root_p / p, _side(root_p / p)) for p in index["mask"]],
        "types": list(index["defect_type"]),
    }


def _side(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0]


def read_real(rows: pd.DataFrame, roots, size: int, types) -> dict:
    """Real defects of ``rows`` whose type is among ``types``, at ``size``."""
    rows = _defects_of(rows, types)
    images, masks = row_files(rows, roots)
    return {
        "images": [load_rgb(f, size) for f in images],
        "masks": [load_mask(m, size) for m in masks],
        "types": list(rows["defect_type"]),
        "categories": list(rows["category"]),
    }


def _defects_of(rows: pd.DataFrame, types) -> pd.DataFrame:
    """The real defects of ``rows`` whose type is among ``types`` (those the generator paints)."""
    rows = defect_rows(rows)
    return rows[rows["defect_type"].isin(list(types))]


def score_fidelity(root: str, index: pd.DataFrame, real_rows: pd.DataFrame, roots, cfg):
    """(report, markdown, MLflow metrics) of :func:`fidelity.fidelity_report`."""
    from vmad_pipeline.models.efficientnet import FrozenEfficientNet, load_efficientnet_lite0

    generated = read_generated(root, index)
    size = generated["images"][0].shape[0]
    real = read_real(real_rows, roots, size, set(index["defect_type"]))
    backbone = FrozenEfficientNet(load_efficientnet_lite0())
    report = fidelity.fidelity_report(generated, real, backbone, cfg.fidelity)
    md = "# Generated defects: fidelity\n\n" + f"Realism: {fidelity.STATISTIC}.\n\n"
    md += fidelity.markdown_table("Per defect type", report["per_type"], fidelity.FIDELITY_COLUMNS)
    return report, md, _metrics(report["per_type"], "fidelity")


def score_detector(predictor, root: str, index: pd.DataFrame, real_rows: pd.DataFrame, roots, cfg):
    """The detector's scores on the tree's normal and generated images and on the real defects
    of ``real_rows``: (report, markdown, MLflow metrics) of :func:`fidelity.detector_report`."""
    root_p, size = Path(root), predictor.image_size
    bases = sorted(set(index["base"]))

    def scores(files, categories):
        images, _ = load_batch(files, None, size)
        pred = predictor.predict(
            images, categories, output_size=size, batch_size=cfg.fidelity.batch_size
        )
        return np.asarray(pred.scores)

    normal = scores([root_p / b for b in bases], [b.split("/")[0] for b in bases])
    gen = scores([root_p / p for p in index["image"]], list(index["category"]))
    rows = _defects_of(real_rows, set(index["defect_type"]))
    real = scores(row_files(rows, roots)[0], list(rows["category"]))
    report = fidelity.detector_report(
        normal,
        {"scores": gen, "types": list(index["defect_type"])},
        {"scores": real, "types": list(rows["defect_type"])},
    )
    md = "# Generated defects: the detector\n\nImage AUROC against the same normal images "
    md += f"({report['n_normal']}).\n\n"
    md += fidelity.markdown_table("Per defect type", report["per_type"], fidelity.DETECTOR_COLUMNS)
    return report, md, _metrics(report["per_type"], "detector")


def _metrics(table: dict[str, dict], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_{k}_{t}": v
        for t, row in table.items()
        for k, v in row.items()
        if isinstance(v, float) and not k.startswith("n_")
    }


__all__ = ["generate", "make_pool", "painter_from_stage", "score_detector", "score_fidelity"]
