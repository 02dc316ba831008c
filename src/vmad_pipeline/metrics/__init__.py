"""Evaluation metrics (exact definitions of the design note ``metrics.md``), one module per family."""

from vmad_pipeline.metrics.image import (
    image_ap,
    image_auroc,
    image_f1_max,
    image_pr_curve,
    image_roc_curve,
)
from vmad_pipeline.metrics.pixel import aupro, pixel_ap, pixel_auroc, pro_200_thresholds, pro_curve
from vmad_pipeline.metrics.text import (
    answer_accuracy,
    balanced_answer_accuracy,
    parse_defect_type,
    parse_location,
    parse_object,
    parse_option,
    parse_yes_no,
)

__all__ = [
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "image_roc_curve",
    "image_pr_curve",
    "pixel_auroc",
    "pixel_ap",
    "aupro",
    "pro_curve",
    "pro_200_thresholds",
    "answer_accuracy",
    "balanced_answer_accuracy",
    "parse_yes_no",
    "parse_location",
    "parse_defect_type",
    "parse_object",
    "parse_option",
]
