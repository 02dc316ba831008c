"""The one small hook module: run tags and names that kedro-mlflow does not set by itself."""

from __future__ import annotations

import logging
import subprocess
from typing import Any

from kedro.framework.hooks import hook_impl

from vmad_pipeline.configs.train import run_tags
from vmad_pipeline.datasets.manifest import manifest_hash

log = logging.getLogger(__name__)


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files have uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def run_name(run_params: dict[str, Any]) -> str:
    """An MLflow run is named by the pipeline it ran (``default`` for ``kedro run``)."""
    name = run_params.get("pipeline_name") or run_params.get("pipeline_names")
    if isinstance(name, list | tuple):
        name = "+".join(name) if name else None
    return name if name and name != "__default__" else "default"


class RunTagsHook:
    """Names the active MLflow run after its pipeline and tags it with the git commit, the hash
    of the data manifest (``dataset_hash``) and, when it trains, the model's identity
    (``configs.train.run_tags``)."""

    @staticmethod
    def _tag(**tags: str) -> None:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.set_tags(tags)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._first = {"git_commit": git_commit(), "mlflow.runName": run_name(run_params)}

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async, run_id) -> None:
        first = getattr(self, "_first", None)
        if first:  # kedro-mlflow's run exists from here on
            self._tag(**first)
            self._first = None
        if node.name == "train_model" and "params:train" in inputs:
            self._tag(**run_tags(inputs["params:train"]))

    @hook_impl
    def after_dataset_loaded(self, dataset_name, data, node) -> None:
        if dataset_name == "manifest":
            self._tag(dataset_hash=manifest_hash(data))

    @hook_impl
    def after_dataset_saved(self, dataset_name, data, node) -> None:
        if dataset_name == "manifest":
            self._tag(dataset_hash=manifest_hash(data))
