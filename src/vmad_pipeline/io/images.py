"""A Kedro dataset for a generated image tree (the synthetic dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset


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
