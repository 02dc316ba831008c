"""Custom Kedro datasets: image trees, tokenizers, VMAD checkpoints, MLflow curves.

Each writes atomically (a temporary directory swapped in), so a failed node never leaves a
half-written artifact where the next run would pick it up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from vmad_pipeline.io.atomic import atomic_directory


class ImageTreeDataset(AbstractDataset[dict[str, np.ndarray], str]):
    """A folder of images: saves ``{relative path: uint8 array}``; loads the folder's path.

    Loading returns the root (a string) so that format readers, which also read real data
    from configured roots, stay the one place that knows a layout.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def _save(self, data: dict[str, np.ndarray]) -> None:
        if not data:
            return  # nothing generated (synthetic data disabled): leave the folder alone
        from vmad_pipeline.datasets.synthetic import write_tree

        write_tree(data, self._path)

    def _load(self) -> str:
        # The path even if nothing was generated: a reader given it names the missing root.
        return str(self._path)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class TokenizerDataset(AbstractDataset):
    """A Hugging Face tokenizer directory (``save_pretrained`` / ``from_pretrained``)."""

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def _save(self, tokenizer) -> None:
        with atomic_directory(self._path) as tmp:
            tokenizer.save_pretrained(tmp)

    def _load(self):
        from transformers import PreTrainedTokenizerFast

        if not (self._path / "tokenizer.json").is_file():
            raise DatasetError(
                f"no tokenizer at {self._path}; run `kedro run --pipeline train` first"
            )
        return PreTrainedTokenizerFast.from_pretrained(self._path)

    def _exists(self) -> bool:
        return (self._path / "tokenizer.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class VmadCheckpointDataset(AbstractDataset):
    """A trained VMAD model + tokenizer; see ``models/build.py`` for the directory layout."""

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def _save(self, data) -> None:
        from vmad_pipeline.models.build import save_checkpoint

        model, tokenizer = data
        save_checkpoint(model, tokenizer, self._path)

    def _load(self):
        from vmad_pipeline.models.build import load_checkpoint

        return load_checkpoint(self._path)  # names the path and the command when it is missing

    def _exists(self) -> bool:
        return (self._path / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class VmadExportDataset(VmadCheckpointDataset):
    """A merged, standalone VMAD for inference (``export_model`` / ``load_exported``)."""

    def _save(self, data) -> None:
        from vmad_pipeline.models.build import export_model

        model, tokenizer = data
        export_model(model, tokenizer, self._path)

    def _load(self):
        from vmad_pipeline.models.build import load_exported

        return load_exported(self._path)


class MlflowCurvesDataset(AbstractDataset):
    """Logs ``{name: value or [values per step]}`` to the active MLflow run in batches.

    kedro-mlflow's history datasets send one request per point; a training curve of a few
    thousand points is sent here with ``log_batch`` (1000 metrics per request, MLflow's limit).
    """

    def __init__(self, *, prefix: str = "", metadata: dict[str, Any] | None = None) -> None:
        self._prefix = prefix
        self.metadata = metadata

    def _save(self, data: dict[str, Any]) -> None:
        import time

        import mlflow
        from mlflow.entities import Metric

        run = mlflow.active_run()
        if run is None:
            return  # tracking disabled for this run
        now = int(time.time() * 1000)
        points = []
        for name, value in data.items():
            values = value if isinstance(value, list | tuple) else [value]
            for step, v in enumerate(values):
                if v is not None and np.isfinite(v):
                    points.append(Metric(f"{self._prefix}{name}", float(v), now, step))
        client = mlflow.MlflowClient()
        for i in range(0, len(points), 1000):
            client.log_batch(run.info.run_id, metrics=points[i : i + 1000])

    def _load(self) -> dict[str, Any]:
        raise DatasetError("MlflowCurvesDataset is write-only; read curves in the MLflow UI")

    def _describe(self) -> dict[str, Any]:
        return {"prefix": self._prefix}


class AblationCellStore:
    """Finished ablation cells, one JSON file per cache key, each written atomically.

    The one deliberate exception to "nodes do no I/O": a long ablation keeps every cell the
    moment it finishes, so an interrupted run resumes and nothing computed is lost.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _file(self, key: str) -> Path:
        return self.path / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        import json

        file = self._file(key)
        return json.loads(file.read_text()) if file.is_file() else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        import json

        from vmad_pipeline.io.atomic import atomic_write_text

        atomic_write_text(self._file(key), json.dumps(record, indent=1, sort_keys=True))

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.json")) if self.path.is_dir() else []


class AblationCellStoreDataset(AbstractDataset):
    """Loads an :class:`AblationCellStore` on a folder (created on first write)."""

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def _load(self) -> AblationCellStore:
        return AblationCellStore(self._path)

    def _save(self, data) -> None:
        raise DatasetError("the ablation cell store is written cell by cell through its handle")

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
