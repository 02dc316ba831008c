"""RIAD annotation: defect taxonomy, mask geometry in words, COCO export, QA backends
(deterministic templates; an OpenAI-compatible LLM in ``annotation.llm``, imported on demand)."""

from vmad_pipeline.annotation.coco import build_coco, mask_to_rle, rle_to_mask
from vmad_pipeline.annotation.config import AnnotateConfig, LlmConfig, parse_annotate_params
from vmad_pipeline.annotation.geometry import location_phrase, mask_geometry, size_phrase
from vmad_pipeline.annotation.riad import UNKNOWN_DEFECT, QaItem, assemble_riad, template_answerer
from vmad_pipeline.annotation.taxonomy import DefectType, Taxonomy, normalise_name
from vmad_pipeline.annotation.templates import defect_family, normal_answer, template_qa

__all__ = [
    "DefectType",
    "Taxonomy",
    "normalise_name",
    "location_phrase",
    "size_phrase",
    "mask_geometry",
    "mask_to_rle",
    "rle_to_mask",
    "build_coco",
    "template_qa",
    "normal_answer",
    "defect_family",
    "assemble_riad",
    "template_answerer",
    "QaItem",
    "UNKNOWN_DEFECT",
    "AnnotateConfig",
    "LlmConfig",
    "parse_annotate_params",
]
