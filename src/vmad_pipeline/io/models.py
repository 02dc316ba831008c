"""Kedro datasets for tokenizers, VMAD checkpoints and exports; each writes atomically (a
temporary directory swapped in), so a failed node never leaves a half-written artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from vmad_pipeline.atomic import atomic_directory


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
    """A trained VMAD checkpoint (``models/checkpoint.py`` has the directory layout).

    Saves ``(model, tokenizer)``; loads a :class:`~vmad_pipeline.models.checkpoint.Checkpoint`
    handle, so the node that needs the model loads it once, with this machine's weight paths
    (``params:weights``), and a node that does not never pays for it."""

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def _save(self, data) -> None:
        from vmad_pipeline.models.checkpoint import save_checkpoint

        model, tokenizer = data
        save_checkpoint(model, tokenizer, self._path)

    def _load(self):
        from vmad_pipeline.models.checkpoint import Checkpoint

        return Checkpoint(self._path)  # names the path and the command when it is missing

    def _exists(self) -> bool:
        return (self._path / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class VmadExportDataset(VmadCheckpointDataset):
    """A merged, standalone VMAD for inference (``export_model`` / ``load_exported``)."""

    def _save(self, data) -> None:
        from vmad_pipeline.models.checkpoint import export_model

        model, tokenizer = data
        export_model(model, tokenizer, self._path)

    def _load(self):
        from vmad_pipeline.models.checkpoint import load_exported

        return load_exported(self._path)
