"""The embedded default dataset: procedurally generated industrial images with exact defect masks.

Everything is deterministic from a seed and written in the MVTec AD layout, so the synthetic data
goes through the same reader (:mod:`vmad_pipeline.datasets.mvtec`) as real data. The parameters
are :class:`vmad_pipeline.configs.ingest.SyntheticConfig`; the class and defect names it accepts
(``SYNTHETIC_CLASSES``, ``SYNTHETIC_DEFECTS``) are exactly the keys of the registries here.

Modules: ``draw`` (shared primitives), ``textures`` and ``objects`` (one renderer per class),
``defects`` (one function per defect type), ``generation`` (seeding, the camera, the tree writer).
"""

from vmad_pipeline.datasets.synthetic.defects import AVAILABLE_DEFECTS, DEFECTS, DefectFn
from vmad_pipeline.datasets.synthetic.generation import (
    AVAILABLE_CLASSES,
    CLASS_FAMILIES,
    class_defects,
    generate_synthetic,
    write_tree,
)

__all__ = [
    "AVAILABLE_CLASSES",
    "AVAILABLE_DEFECTS",
    "CLASS_FAMILIES",
    "DEFECTS",
    "DefectFn",
    "class_defects",
    "generate_synthetic",
    "write_tree",
]
