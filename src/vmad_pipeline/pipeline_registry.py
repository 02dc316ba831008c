"""Project pipelines: one package per pipeline under ``pipelines/``."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

ORDER = ("ingest", "annotate", "split", "train", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """``__default__`` runs ingest to evaluate. Kedro imports only the packages asked for;
    before them, the installed torch / torchvision pair is checked (``install_check``)."""
    from vmad_pipeline.install_check import check_torch_pair

    check_torch_pair()
    pipelines = find_pipelines(raise_errors=True)
    if all(name in pipelines for name in ORDER):
        pipelines["__default__"] = sum((pipelines[name] for name in ORDER), Pipeline([]))
    return pipelines
