"""Great Expectations validation of the manifest at the ingestion boundary.

``rules`` computes every rule in pandas (the files opened once each); ``suite`` runs them as GE
expectations and builds the report; ``quarantine`` leaves out the rows that break row rules
(``ingest.on_error: quarantine``) and validates the rest again. Parameters: :class:`vmad_pipeline.configs.ingest.ValidationConfig`.
"""

from vmad_pipeline.datasets.validation.quarantine import validate_or_quarantine
from vmad_pipeline.datasets.validation.rules import declared_sources
from vmad_pipeline.datasets.validation.suite import (
    MAX_FAILED_ROWS,
    ManifestValidationError,
    failed_rules,
    raise_on_failure,
    run_validation,
    validate_manifest,
)

__all__ = [
    "MAX_FAILED_ROWS",
    "ManifestValidationError",
    "declared_sources",
    "failed_rules",
    "raise_on_failure",
    "run_validation",
    "validate_manifest",
    "validate_or_quarantine",
]
