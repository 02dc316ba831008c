"""The ablation's cell store: finished cells kept one JSON file each, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from vmad_pipeline.atomic import atomic_write_text


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
