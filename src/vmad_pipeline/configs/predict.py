"""The ``predict`` parameters (``conf/base/parameters_predict.yml``): which images, which object
name, the decision thresholds and placement (docs/predict.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmad_pipeline.configs.base import check, check_placement, from_dict


@dataclass(frozen=True)
class PredictConfig:
    # a folder (every image under it), a glob ("data/new/**/*.png") or a manifest (.csv or
    # .parquet with a column image_path, relative to the manifest's folder, and maybe category)
    input: str = "data/01_raw/synthetic/*/test/*/*.png"
    # the object name in the question; null: the manifest's category, else the folder name
    # (in an MVTec layout, the class folder above train/ or test/)
    category: str | None = None
    image_threshold: float = 0.5  # decision: anomalous when the image score >= this
    pixel_threshold: float = 0.5  # the binary mask: map >= this
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "a folder, a glob or a manifest file")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(0.0 <= self.image_threshold <= 1.0, "image_threshold", "must be in [0, 1]")
        check(0.0 <= self.pixel_threshold <= 1.0, "pixel_threshold", "must be in [0, 1]")
        check_placement(self.device, self.precision)


def parse_predict_params(params: dict[str, Any] | None) -> PredictConfig:
    return from_dict(PredictConfig, params, "predict")
