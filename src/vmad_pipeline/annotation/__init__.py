"""RIAD annotation: defect taxonomy, mask geometry in words, COCO export, QA backends
(deterministic templates; an OpenAI-compatible LLM in ``annotation.llm``, imported on demand).

Imports only its own layer and below (:mod:`vmad_pipeline.datasets`, :mod:`vmad_pipeline.configs`,
:mod:`vmad_pipeline.atomic`); mask encodings (RLE, bbox) are :mod:`vmad_pipeline.datasets.masks`.
"""

from vmad_pipeline.annotation.coco import build_coco
from vmad_pipeline.annotation.geometry import location_phrase, mask_geometry, size_phrase
from vmad_pipeline.annotation.riad import UNKNOWN_DEFECT, QaItem, assemble_riad, template_answerer
from vmad_pipeline.annotation.taxonomy import (
    DefectType,
    Taxonomy,
    apply_taxonomy,
    normalise_name,
    resolve_defects,
)
from vmad_pipeline.annotation.templates import defect_family, normal_answer, template_qa

__all__ = [
    "DefectType",
    "Taxonomy",
    "normalise_name",
    "apply_taxonomy",
    "resolve_defects",
    "location_phrase",
    "size_phrase",
    "mask_geometry",
    "build_coco",
    "template_qa",
    "normal_answer",
    "defect_family",
    "assemble_riad",
    "template_answerer",
    "QaItem",
    "UNKNOWN_DEFECT",
]
