"""Test-wide settings: no telemetry, no hub access, MLflow in a temporary store."""

from __future__ import annotations

import os

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri(tmp_path, monkeypatch):
    """Any MLflow call outside a Kedro session lands in a throwaway SQLite store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(autouse=True)
def _no_mlflow_run_left():
    """No test leaves an active MLflow run to the next (a Kedro session in a notebook cell once
    did, and the next test's ``start_run`` failed); a run whose store a test removed is dropped
    all the same (``end_run`` pops it before it fails)."""
    yield
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    while mlflow.active_run() is not None:
        try:
            mlflow.end_run()
        except Exception:  # noqa: BLE001 (the run is popped; its store may be gone)
            pass


@pytest.fixture
def gradio_cache(tmp_path, monkeypatch):
    """Gradio's uploads and outputs in the test's folder, not the machine's /tmp/gradio, and no
    analytics (the demo's tests: ``pytestmark = pytest.mark.usefixtures("gradio_cache")``)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
