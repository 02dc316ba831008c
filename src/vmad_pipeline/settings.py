"""Kedro project settings."""

import os

from kedro.config import OmegaConfigLoader

from vmad_pipeline.hooks import ParamsCheckHook, RunStatusHook, RunSummaryHook, RunTagsHook

# Registering the model copies its files within the local store; MLflow shows that as a
# "Downloading artifacts" bar although nothing is downloaded. Off unless a user asks for it.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

HOOKS = (ParamsCheckHook(), RunStatusHook(), RunTagsHook(), RunSummaryHook())
CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {"base_env": "base", "default_run_env": "local"}
