"""On-disk cache of validated LLM answers: one JSON file per request key, written atomically.

The key is the SHA-256 of (image content hash, prompt text, model, generation parameters), so
a rerun with the same inputs sends nothing, and changing any of them asks again. Files live at
``<dir>/replies/<key[:2]>/<key>.json``; a file is written to a temporary name in the same folder
and renamed into place, so a killed run never leaves a half-written entry. Unreadable entries
are treated as misses (warned) and overwritten by the next success.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmad_pipeline.atomic import atomic_write_text

__all__ = ["ReplyCache", "request_key", "write_json_atomic"]

logger = logging.getLogger(__name__)


def request_key(*, image_sha256: str, prompt: str, model: str, params: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of everything that decides the reply."""
    blob = json.dumps(
        {"image": image_sha256, "prompt": prompt, "model": model, "params": dict(params)},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1))


class ReplyCache:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / "replies" / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or None when absent or unreadable."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            logger.warning("LLM cache entry %s is unreadable (%s); asking again", path, err)
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("answers"), dict):
            logger.warning("LLM cache entry %s has no 'answers' object; asking again", path)
            return None
        return entry

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        write_json_atomic(self.path(key), dict(entry))
