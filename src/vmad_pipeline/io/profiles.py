"""The Kedro dataset of product profiles (``inference.profiles``): one folder per profile under
``folder``, saved whole (a directory swap)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset


class ProfileDataset(AbstractDataset):
    """Saves a ``Profile`` to ``<folder>/<name>/``; loads the names of the stored profiles."""

    def __init__(self, *, folder: str, metadata: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.metadata = metadata

    def _save(self, data) -> None:
        from vmad_pipeline.inference.profiles import save_profile

        save_profile(data, self.folder)

    def _load(self) -> list[str]:
        return sorted(p.parent.name for p in self.folder.glob("*/profile.json"))

    def _exists(self) -> bool:
        return self.folder.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"folder": str(self.folder)}
