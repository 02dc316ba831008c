"""The one small hook module: run tags that kedro-mlflow does not set by itself."""

from __future__ import annotations

import hashlib
import logging
import subprocess

from kedro.framework.hooks import hook_impl

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


def manifest_hash(manifest) -> str:
    """Identity of a dataset: its images' paths, contents (sha256) and labels."""
    rows = manifest[["source", "image_path", "sha256", "label"]].astype(str).agg("|".join, axis=1)
    return hashlib.md5("\n".join(sorted(rows)).encode()).hexdigest()


def model_tags(train_params: dict) -> dict[str, str]:
    """The tags to filter and compare training runs by in the MLflow UI (the ``train``
    parameters, validated): preset, projector, LTC and DSSL on/off, seed."""
    from vmad_pipeline.pipelines.train.nodes import parse_train_params

    cfg, model = parse_train_params(dict(train_params))
    return {
        "preset": model.preset,
        "projector": model.projector.name,
        "ltc": "on" if model.projector.name == "ltc" else "off",
        "dssl": "on" if model.dssl.enabled else "off",
        "seed": str(cfg.seed),
    }


class RunTagsHook:
    """Tags the active MLflow run with the git commit, the hash of the data manifest
    (``dataset_hash``) and, when it trains, the model's identity (:func:`model_tags`)."""

    @staticmethod
    def _tag(**tags: str) -> None:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.set_tags(tags)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._committed = False

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async, run_id) -> None:
        if not getattr(self, "_committed", False):
            self._tag(git_commit=git_commit())  # kedro-mlflow's run exists from here on
            self._committed = True
        if node.name == "train_model" and "params:train" in inputs:
            self._tag(**model_tags(inputs["params:train"]))

    @hook_impl
    def after_dataset_loaded(self, dataset_name, data, node) -> None:
        if dataset_name == "manifest":
            self._tag(dataset_hash=manifest_hash(data))

    @hook_impl
    def after_dataset_saved(self, dataset_name, data, node) -> None:
        if dataset_name == "manifest":
            self._tag(dataset_hash=manifest_hash(data))
