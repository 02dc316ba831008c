"""Evaluation metrics (exact definitions of the design note ``metrics.md``), one module per family."""

from vmad_pipeline.metrics.image import image_ap, image_auroc, image_f1_max
from vmad_pipeline.metrics.pixel import aupro, pixel_ap, pixel_auroc, pro_200_thresholds

__all__ = [
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "aupro",
    "pro_200_thresholds",
]
