"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from vmad_pipeline.hooks import ParamsCheckHook, RunStatusHook, RunSummaryHook, RunTagsHook

HOOKS = (ParamsCheckHook(), RunStatusHook(), RunTagsHook(), RunSummaryHook())
CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {"base_env": "base", "default_run_env": "local"}
