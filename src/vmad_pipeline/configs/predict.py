"""The ``predict`` parameters (``conf/base/parameters_predict.yml``): which images, which object
name, the decision thresholds and placement (docs/predict.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmad_pipeline.configs.base import check, check_placement, from_dict

# The pixel limit of every image a user gives (REST, pyfunc, predict): larger ones are refused
# from their header, before anything is decoded (decompression bombs; images.check_pixels).
DEFAULT_MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000


@dataclass(frozen=True)
class PredictConfig:
    # a folder (every image under it), a glob ("data/new/**/*.png") or a manifest (.csv or
    # .parquet with a column image_path, relative to the manifest's folder, and maybe category)
    input: str = "data/01_raw/synthetic/*/test/*/*.png"
    # the object name in the question; null: the manifest's category, else the folder name
    # (in an MVTec layout, the class folder above train/ or test/)
    category: str | None = None
    # decision: anomalous when the image score >= this; the mask: map >= this. null: the
    # thresholds calibrated with the model (train.calibration), 0.5 where it has none
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    batch_size: int = 8
    # normal references (docs/references.md): null (zero-shot) | batch (each image against other
    # images of its product in the input) | a profile's name (under `profiles`) | a folder or
    # glob of normal images of the product. The image threshold is chosen from them alone
    # (evaluate.references.model_threshold; one image: from its flipped views)
    references: str | None = None
    profiles: str = "data/06_models/profiles"
    # an image of more pixels is refused from its header (an error line), as the REST server does
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "a folder, a glob or a manifest file")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.max_pixels >= 1, "max_pixels", "must be >= 1")
        for key in ("image_threshold", "pixel_threshold"):
            value = getattr(self, key)
            check(value is None or 0.0 <= value <= 1.0, key, "must be in [0, 1] or null")
        check_placement(self.device, self.precision)


def parse_predict_params(params: dict[str, Any] | None) -> PredictConfig:
    return from_dict(PredictConfig, params, "predict")
