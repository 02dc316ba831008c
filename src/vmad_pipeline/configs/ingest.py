"""The ``ingest`` parameters (``conf/base/parameters_ingest.yml``): the sources to read, how bad
input is handled, parallel reading, the validation suite and the synthetic generator."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from vmad_pipeline.configs.base import check, from_dict

ON_ERROR = ("raise", "quarantine")
PARALLEL = ("process", "thread")
IMAGE_CHECKS = ("header", "decode")
MASK_VALUES = ("threshold", "binary")
# What the synthetic generator can draw (datasets/synthetic registers one renderer per name).
SYNTHETIC_CLASSES = (
    "woven_cloth",
    "carpet",
    "striped_fabric",
    "wood",
    "leather",
    "tile",
    "washer",
    "bottle_cap",
    "hex_nut",
    "screw",
    "capsule",
    "cable",
    "pcb",
)
SYNTHETIC_DEFECTS = (
    "scratch",
    "crack",
    "hole",
    "stain",
    "contamination",
    "missing_part",
    "deformation",
    "discoloration",
)
SOURCE_KEYS = ("name", "format", "root", "defect_map")  # the rest of an entry: reader options


@dataclass(frozen=True)
class SyntheticConfig:
    enabled: bool = True  # generate the embedded default dataset
    seed: int = 0  # everything is a pure function of this seed
    image_size: int = 128  # square images, in pixels
    classes: tuple[str, ...] = SYNTHETIC_CLASSES  # object/texture classes to generate
    defect_types: tuple[str, ...] = SYNTHETIC_DEFECTS  # pool of defects the classes draw from
    defects_per_class: int = 3  # each class gets this many of defect_types (seeded choice)
    n_train_good: int = 20  # normal training images per class
    n_test_good: int = 10  # normal test images per class
    n_test_defect: int = 4  # test images per class and per defect type
    # Multiplies every defect's area (radii, lengths, stroke widths, cluster spread by sqrt), in (0, 16].
    defect_scale: float = 1.0
    # Multiplies every defect's intensity change relative to the normal image, in (0, 3].
    defect_contrast: float = 1.0

    def __post_init__(self) -> None:
        for name, valid in (("classes", SYNTHETIC_CLASSES), ("defect_types", SYNTHETIC_DEFECTS)):
            value = getattr(self, name)
            check(
                not isinstance(value, str),
                name,
                f"must be a list of names, got the string {value!r}",
            )
            value = tuple(value)
            object.__setattr__(self, name, value)
            unknown = [v for v in value if v not in valid]
            check(not unknown, name, f"unknown names {unknown}; valid names: {list(valid)}")
            check(
                bool(value) and len(set(value)) == len(value),
                name,
                f"must be non-empty and without repeats, got {list(value)}",
            )
        for name in ("defects_per_class", "n_train_good", "n_test_good", "n_test_defect"):
            check(
                int(getattr(self, name)) > 0, name, f"must be positive, got {getattr(self, name)}"
            )
        for name, hi in (("defect_scale", 16.0), ("defect_contrast", 3.0)):
            value = getattr(self, name)
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            check(
                not isinstance(value, bool) and 0.0 < number <= hi,
                name,
                f"must be a number in (0, {hi:g}], got {value!r}",
            )
            object.__setattr__(self, name, number)
        check(self.image_size >= 32, "image_size", f"must be >= 32, got {self.image_size}")
        check(
            self.defects_per_class <= len(self.defect_types),
            "defects_per_class",
            f"({self.defects_per_class}) exceeds the number of defect_types "
            f"({len(self.defect_types)})",
        )


@dataclass(frozen=True)
class ValidationConfig:
    # Smallest accepted image width / height (pixels): below it a defect cannot be seen, and a
    # 1 x 1 file is a thumbnail or a placeholder, not a dataset image. The synthetic generator's
    # floor (image_size >= 32); real benchmarks' images are hundreds of pixels.
    min_side: int = 32
    max_side: int = 20000  # largest accepted image width / height (pixels)
    # threshold: a mask pixel is positive iff > 0 (any values; VisA's masks are small integers);
    # binary: also require the raw values to be {0, 1} or {0, 255} (MVTec-style masks)
    mask_values: str = "threshold"
    # a mask whose positive pixels cover more of its image is refused as inverted (0 = defect)
    max_mask_fraction: float = 0.9
    workers: int = 8  # threads opening files (I/O bound; PIL releases the GIL while decoding)
    progress: bool = True

    def __post_init__(self) -> None:
        check(self.min_side >= 1, "min_side", "must be >= 1")
        check(self.max_side >= self.min_side, "max_side", "must be >= min_side")
        check(self.mask_values in MASK_VALUES, "mask_values", f"one of {', '.join(MASK_VALUES)}")
        check(self.workers >= 1, "workers", "must be >= 1")
        check(0.0 < self.max_mask_fraction <= 1.0, "max_mask_fraction", "must be in (0, 1]")


@dataclass(frozen=True)
class IngestConfig:
    progress: bool = True
    on_error: str = "raise"  # raise: stop naming file and rule | quarantine: leave the rows out
    workers: int = 0  # file-reading workers (0 = one per CPU; 1 = in this process)
    parallel: str = "process"  # kind of workers: process | thread
    image_check: str = "header"  # header: hash + header | decode: also decode every image
    cache: str | None = "data/02_intermediate/ingest_cache.parquet"  # null: no incremental cache
    masks_dir: str = "data/02_intermediate/masks"  # rasterised masks go to <masks_dir>/<source>/
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # {name, format, root, [reader options], [defect_map]} each; the reader options are checked
    # against the format's reader (datasets.registry.source_options).
    sources: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        check(self.on_error in ON_ERROR, "on_error", f"{self.on_error!r} is not one of {ON_ERROR}")
        check(self.workers >= 0, "workers", f"{self.workers} < 0 (0 means one per CPU)")
        check(self.parallel in PARALLEL, "parallel", f"one of {', '.join(PARALLEL)}")
        check(self.image_check in IMAGE_CHECKS, "image_check", f"one of {', '.join(IMAGE_CHECKS)}")
        check(bool(self.sources), "sources", "no source configured")
        names: set[str] = set()
        for i, src in enumerate(self.sources):
            check(isinstance(src, dict), f"sources[{i}]", f"expected a mapping, got {src!r}")
            for key in ("name", "format", "root"):
                check(bool(src.get(key)), f"sources[{i}].{key}", "missing")
            name = str(src["name"])
            check(
                name not in names and ":" not in name,
                f"sources[{i}].name",
                f"duplicate or invalid (':') source name {name!r}",
            )
            names.add(name)


def parse_ingest_params(params: dict[str, Any] | None) -> IngestConfig:
    """``params:ingest`` -> :class:`IngestConfig`; a bad key or value names itself."""
    return from_dict(IngestConfig, params, "ingest")
