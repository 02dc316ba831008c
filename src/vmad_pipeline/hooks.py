"""The one small hook module: run tags that kedro-mlflow does not set by itself."""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path

from kedro.framework.hooks import hook_impl

log = logging.getLogger(__name__)


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def file_hash(path: str | Path) -> str:
    p = Path(path)
    return hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else ""


class RunTagsHook:
    """Tags the active MLflow run with the git commit and the hash of the data manifest."""

    def __init__(self) -> None:
        self._tagged = False

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async, run_id) -> None:
        if self._tagged:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        tags = {"git_commit": git_commit()}
        digest = file_hash("data/02_intermediate/manifest.parquet")
        if digest:
            tags["data_manifest_md5"] = digest
        mlflow.set_tags(tags)
        self._tagged = True
