"""Generation: every image of a :class:`~vmad_pipeline.configs.ingest.SyntheticConfig`, seeded
per image, in the MVTec AD layout; and the atomic writer of the tree.

Each image is seeded from ``(seed, class, split, defect, index)`` so that changing the counts of one
class leaves every other image unchanged. Rendering is in three independent random streams: the
normal appearance, the defect, and the "camera" (lighting gradient, sensor noise). A defect image is
therefore exactly its normal twin plus the defect, and its mask covers every pixel the defect changed.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vmad_pipeline.atomic import atomic_directory
from vmad_pipeline.configs.ingest import SyntheticConfig
from vmad_pipeline.datasets.synthetic.defects import DEFECTS, apply_contrast
from vmad_pipeline.datasets.synthetic.draw import Array, Renderer, grid
from vmad_pipeline.datasets.synthetic.objects import OBJECTS
from vmad_pipeline.datasets.synthetic.textures import TEXTURES

logger = logging.getLogger(__name__)

# class name -> (family, renderer): keyed by exactly configs.ingest.SYNTHETIC_CLASSES
_CLASSES: dict[str, tuple[str, Renderer]] = {**TEXTURES, **OBJECTS}
AVAILABLE_CLASSES: tuple[str, ...] = tuple(_CLASSES)
CLASS_FAMILIES: dict[str, str] = {name: family for name, (family, _) in _CLASSES.items()}


def _key(*parts: int | str) -> np.random.SeedSequence:
    """A seed sequence from ints and strings (strings hashed with CRC-32: stable across runs and platforms)."""
    return np.random.SeedSequence(
        [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    )


def class_defects(config: SyntheticConfig, cls: str) -> tuple[str, ...]:
    """The defect types of one class, in the order of ``config.defect_types`` (seeded by seed and class)."""
    rng = np.random.default_rng(_key(config.seed, cls, "defects"))
    chosen = rng.choice(len(config.defect_types), size=config.defects_per_class, replace=False)
    return tuple(config.defect_types[i] for i in sorted(chosen))


def _finish(img: Array, rng: np.random.Generator) -> Array:
    """The camera: a lighting gradient, exposure, sensor noise; then to uint8. Pointwise, so defects stay in their mask."""
    size = img.shape[0]
    yy, xx = grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    gain = 1 + rng.uniform(0, 0.12) * (
        (xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle)
    ) / (size / 2)
    out = img * (gain * rng.uniform(0.92, 1.08))[..., None] + rng.normal(
        0, rng.uniform(0.004, 0.015), img.shape
    )
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def _render(
    config: SyntheticConfig,
    cls: str,
    split: str,
    defect: str | None,
    index: int,
    *,
    apply_defect: bool = True,
) -> tuple[Array, Array | None]:
    """One image (H, W, 3) uint8 and, for a defect, its mask (H, W) uint8 0/255."""
    appearance, damage, camera = _key(config.seed, cls, split, defect or "good", index).spawn(3)
    _, renderer = _CLASSES[cls]
    # Same draws for every image of the class.
    class_rng = np.random.default_rng(_key(config.seed, cls, "class"))
    img, footprint, background = renderer(
        config.image_size, class_rng, np.random.default_rng(appearance)
    )
    mask = None
    if defect is not None:
        rng = np.random.default_rng(damage)
        min_pixels = max(8, int(0.002 * config.image_size**2))
        for _ in range(50):
            damaged, mask = DEFECTS[defect](
                img, footprint, background, rng, scale=config.defect_scale
            )
            if int(mask.sum()) >= min_pixels:
                break
        else:
            raise RuntimeError(
                f"could not place a {defect!r} defect of >= {min_pixels} px on {cls}/{split}/{index}"
            )
        if apply_defect:
            img = apply_contrast(img, damaged, mask, config.defect_contrast)
        mask = mask.astype(np.uint8) * 255
    return _finish(img, np.random.default_rng(camera)), mask


def generate_synthetic(config: SyntheticConfig, *, progress: bool = True) -> dict[str, np.ndarray]:
    """Relative posix path -> uint8 array, in the MVTec AD layout.

    Images are (H, W, 3) RGB, masks (H, W) with values 0/255:
    ``<cls>/train/good/000.png``, ``<cls>/test/good/000.png``, ``<cls>/test/<defect>/000.png`` and
    ``<cls>/ground_truth/<defect>/000_mask.png``.
    """
    jobs: list[tuple[str, str, str | None, int]] = []
    for cls in config.classes:
        jobs += [(cls, "train", None, i) for i in range(config.n_train_good)]
        jobs += [(cls, "test", None, i) for i in range(config.n_test_good)]
        for defect in class_defects(config, cls):
            jobs += [(cls, "test", defect, i) for i in range(config.n_test_defect)]
    digits = max(
        3, len(str(max(config.n_train_good, config.n_test_good, config.n_test_defect) - 1))
    )
    out: dict[str, np.ndarray] = {}
    for cls, split, defect, index in tqdm(jobs, desc="synthetic images", disable=not progress):
        image, mask = _render(config, cls, split, defect, index)
        stem = f"{index:0{digits}d}"
        out[f"{cls}/{split}/{defect or 'good'}/{stem}.png"] = image
        if mask is not None:
            out[f"{cls}/ground_truth/{defect}/{stem}_mask.png"] = mask
    logger.info(
        "generated %d synthetic images for %d classes (seed %d)",
        len(jobs),
        len(config.classes),
        config.seed,
    )
    return out


def _write_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def write_tree(images: dict[str, np.ndarray], root: str | os.PathLike[str]) -> None:
    """Write ``images`` (relative posix path -> uint8 array) as PNGs under ``root``, atomically.

    The tree is written into a temporary directory next to ``root`` and then swapped in; an existing
    ``root`` is removed only after the new tree is complete. On any error ``root`` is untouched and
    the temporary directory is removed.
    """
    root = Path(root)
    with atomic_directory(root) as tmp:
        for rel, array in images.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError(f"write_tree: path {rel!r} escapes the dataset root")
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_png(array, target)
    logger.info("wrote %d files under %s", len(images), root)
