"""The ``generate`` parameters (``conf/base/parameters_generate.yml``): the defect generator's
model and training (``generate.generator``, also read by the train pipeline when
``train.synthesis`` is not ``paste``), what the generate pipeline paints and how it is scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmad_pipeline.configs.base import check, from_dict

MASK_SOURCES = ("real", "blob")
CLASS_SETS = ("train", "test")


@dataclass(frozen=True)
class GeneratorConfig:
    """The mask-guided defect generator (synthesis/generator.py) and its training (fit.py)."""

    width: int = 16  # channels of the first U-Net level (doubled per level)
    depth: int = 3  # down-samplings; image sides must be multiples of 2 ** depth
    embed_dim: int = 32  # the defect-type embedding (FiLM)
    image_size: int = 128  # images are read at this side (the train pipeline uses SAM's)
    crop: int = 64  # training crops around the defect (4x cheaper than whole 128-px images)
    steps: int = 400
    batch_size: int = 8
    lr: float = 2.0e-3
    grad_weight: float = 1.0  # weight of the image-gradient L1 (keeps edges sharp)
    seed: int = 0
    cache_dir: str = "data/06_models/generator"  # one file per distinct training input
    progress: bool = True

    def __post_init__(self) -> None:
        unit = 2**self.depth
        check(self.width >= 1, "width", "must be >= 1")
        check(1 <= self.depth <= 5, "depth", "must be in 1..5")
        check(self.embed_dim >= 1, "embed_dim", "must be >= 1")
        check(self.image_size % unit == 0, "image_size", f"must be a multiple of {unit}")
        check(
            self.crop % unit == 0 and unit <= self.crop,
            "crop",
            f"must be a positive multiple of 2 ** depth ({unit})",
        )
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.grad_weight >= 0, "grad_weight", "must be >= 0")
        check(bool(self.cache_dir), "cache_dir", "must be a directory path")


@dataclass(frozen=True)
class FidelityConfig:
    """How the generated anomalies are scored (synthesis/fidelity.py)."""

    crop: int = 64  # mask-region crops are resized to this side for the feature statistic
    context: float = 0.5  # the crop is the mask's box grown by this share of its side per side
    psnr_cap: float = 100.0  # dB reported when the outside is bit-exact (MSE 0: infinite PSNR)
    batch_size: int = 16  # detector batch (generation_detector)

    def __post_init__(self) -> None:
        check(self.crop >= 32, "crop", "must be >= 32 (EfficientNet's stride)")
        check(self.context >= 0, "context", "must be >= 0")
        check(self.psnr_cap > 0, "psnr_cap", "must be > 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass(frozen=True)
class GenerateConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    classes: str = "train"  # whose normal images are painted: train | test classes
    per_type: int = 4  # anomalies per (class, training defect type)
    masks: str = "real"  # real (a real mask of that type, moved) | blob (random ellipse)
    max_shift: float = 0.15  # a real mask moves by at most this share of the side
    seed: int = 0
    overview: int = 4  # examples per defect type in the overview figure
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    progress: bool = True

    def __post_init__(self) -> None:
        check(self.classes in CLASS_SETS, "classes", f"one of {', '.join(CLASS_SETS)}")
        check(self.per_type >= 1, "per_type", "must be >= 1")
        check(self.masks in MASK_SOURCES, "masks", f"one of {', '.join(MASK_SOURCES)}")
        check(0.0 <= self.max_shift <= 0.5, "max_shift", "must be in [0, 0.5]")
        check(self.overview >= 1, "overview", "must be >= 1")


def parse_generate_params(params: dict[str, Any] | None) -> GenerateConfig:
    return from_dict(GenerateConfig, params, "generate")
