"""Reader for the MMAD benchmark's questions (``mmad.json``), one row per question.

Format::

    {"<dataset>/<object>/.../000.png": {
        "mask_path": "<dataset>/<object>/.../000_mask.png" | null,
        "similar_templates": [...], "random_templates": [...],
        "conversation": [
            {"Question": "...", "Answer": "A", "Options": {"A": "Yes.", "B": "No."},
             "type": "Anomaly Detection", ...},
            ...]},
     ...}

Image keys and mask paths are relative to the MMAD root and kept as written. Extra keys are ignored;
a missing key, a wrong type, or an ``Answer`` that is not one of the ``Options`` raises IngestError
naming the image key and the field.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from vmad_pipeline.datasets.manifest import IngestError

logger = logging.getLogger(__name__)

MMAD_COLUMNS = [
    "image_path",
    "mask_path",
    "question",
    "options",
    "answer",
    "type",
    "question_index",
    "templates",  # the image's similar normal templates (MMAD's 1-shot protocol reads the first)
]
ENTRY_FIELDS = {"mask_path": (str, type(None)), "similar_templates": list, "random_templates": list}
QUESTION_FIELDS = {"Question": str, "Answer": str, "Options": dict, "type": str}


def _expect_type(value: object, expected: type | tuple[type, ...], where: str) -> None:
    """IngestError naming ``where`` unless ``value`` is an ``expected`` (a field of mmad.json)."""
    if not isinstance(value, expected):
        names = [t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,))]
        raise IngestError(f"{where} is {type(value).__name__}, expected {' or '.join(names)}")


def read_mmad(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The questions of ``mmad.json``: :data:`MMAD_COLUMNS`, in file order (``options`` is a dict
    letter -> text, ``answer`` a letter, ``question_index`` the position in the conversation)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IngestError(f"cannot read MMAD questions {path}: {error}") from error
    _expect_type(doc, dict, f"{path}: the top level")
    if not doc:
        raise IngestError(f"{path} has no images")
    rows = []
    for image, entry in doc.items():
        where = f"{path} [{image!r}]"
        _expect_type(entry, dict, where)
        for field, expected in {**ENTRY_FIELDS, "conversation": list}.items():
            if field not in entry:
                raise IngestError(f"{where} lacks the field {field!r}")
            _expect_type(entry[field], expected, f"{where}.{field}")
        for index, turn in enumerate(entry["conversation"]):
            at = f"{where}.conversation[{index}]"
            _expect_type(turn, dict, at)
            for field, expected in QUESTION_FIELDS.items():
                if field not in turn:
                    raise IngestError(f"{at} lacks the field {field!r}")
                _expect_type(turn[field], expected, f"{at}.{field}")
            if turn["Answer"] not in turn["Options"]:
                raise IngestError(
                    f"{at}.Answer {turn['Answer']!r} is not one of the Options {list(turn['Options'])}"
                )
            rows.append(
                {
                    "image_path": image,
                    "mask_path": entry["mask_path"] or "",
                    "question": turn["Question"],
                    "options": dict(turn["Options"]),
                    "answer": turn["Answer"],
                    "type": turn["type"],
                    "question_index": index,
                    "templates": [str(t) for t in entry["similar_templates"]],
                }
            )
    frame = pd.DataFrame(rows, columns=MMAD_COLUMNS)
    frame["question_index"] = frame["question_index"].astype("int64")
    logger.info("read %d MMAD questions on %d images from %s", len(frame), len(doc), path)
    return frame
