"""Great Expectations validation of the manifest at the ingestion boundary.

``rules`` computes every rule in pandas (the files opened once each); ``suite`` runs them as GE
expectations and builds the report. Parameters: :class:`vmad_pipeline.configs.ingest.ValidationConfig`.
"""

from vmad_pipeline.datasets.validation.rules import declared_sources
from vmad_pipeline.datasets.validation.suite import (
    MAX_FAILED_ROWS,
    ManifestValidationError,
    raise_on_failure,
    validate_manifest,
)

__all__ = [
    "MAX_FAILED_ROWS",
    "ManifestValidationError",
    "declared_sources",
    "raise_on_failure",
    "validate_manifest",
]
