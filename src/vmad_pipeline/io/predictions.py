"""The folder ``kedro run --pipeline predict`` writes into, as a Kedro dataset: loading gives
the :class:`~vmad_pipeline.inference.store.PredictionStore` handle the node writes through
(image by image, so that a rerun resumes), as the checkpoint dataset gives a handle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset


class PredictionStoreDataset(AbstractDataset):
    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def _load(self):
        from vmad_pipeline.inference.store import PredictionStore

        return PredictionStore(self._path)

    def _save(self, data) -> None:
        raise NotImplementedError("the prediction store is written through its handle")

    def _exists(self) -> bool:
        return True  # an empty folder is a store with nothing done

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
