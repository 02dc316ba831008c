"""What a reader returns: a :class:`Listing` of :class:`Item` (one per image, no file read yet) and
the :class:`Problem` s it found, each naming a file and one of the :data:`RULES`.

Problems are collected over every source, then either stop the run naming every file and rule
(:func:`raise_problems`) or leave their rows out and are reported (:func:`quarantine`). The rows
that break a row rule of the validation suite are quarantined the same way, under the rule ids
of :data:`VALIDATION_RULES` (:mod:`vmad_pipeline.datasets.validation.quarantine`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vmad_pipeline.datasets.manifest import IngestError

logger = logging.getLogger(__name__)

# rule id -> the rule, in words (reported with every problem): what reading the files finds
READ_RULES: dict[str, str] = {
    "unreadable_image": "every image file must open as an image",
    "truncated_image": "an image file ends where its format says (JPEG EOI, PNG IEND, BMP and "
    "TIFF declared sizes; datasets/image_end.py)",
    "unreadable_mask": "every mask file must decode as an image",
    "image_without_mask": "an anomalous image needs its mask",
    "mask_without_image": "every mask belongs to an image of the mirrored folder",
    "mask_size": "a mask has its image's width and height",
    "missing_image": "every image that metadata lists must exist",
    "malformed_metadata": "metadata files (JSON, CSV) parse and have the documented fields",
    "unknown_defect": "every defect name maps to a taxonomy type (conf/base/taxonomy.yml)",
}
# rule id -> the rule, for the validation suite's row rules (the id the quarantine report uses;
# the suite's own rule name is in each problem's message). Rules that concern a whole source
# or the table (a source has images and anomalous test images, required columns, a row at all)
# are not quarantined: they stop the run.
VALIDATION_RULES: dict[str, str] = {
    "invalid_row": "a row has its fields set, relative paths, a declared source, label 0 or 1, "
    "and a mask iff anomalous",
    "image_size_mismatch": "an image's header size equals its row's width and height",
    "image_size_limits": "image width and height lie within ingest.validation min_side..max_side",
    "empty_mask": "an anomalous image's mask has a positive pixel (raw value > 0)",
    "inverted_mask": "a mask's positive pixels cover at most ingest.validation max_mask_fraction "
    "of its image (an inverted mask, 0 = defect, covers nearly all of it)",
    "bbox_mismatch": "a row's bbox is the one of its mask's positive pixels",
    "mask_values": "mask raw values are {0, 1} or {0, 255} (ingest.validation.mask_values: binary)",
    "duplicate_image": "an image's content (sha256) is in one split of its source only",
    "duplicate_across_sources": "an image's content (sha256) is in one source only",
}
RULES: dict[str, str] = {**READ_RULES, **VALIDATION_RULES}


@dataclass(frozen=True)
class Problem:
    """One piece of bad input: the file, the rule it breaks, and the row it removes (if any)."""

    source: str
    rule: str
    file: str  # relative to the source root (or its mask root), or the metadata file
    message: str
    image_path: str = ""  # the manifest row this problem removes; "" if it concerns no row

    def as_dict(self) -> dict[str, str]:
        return {
            "source": self.source,
            "rule": self.rule,
            "rule_text": RULES[self.rule],
            "file": self.file,
            "image_path": self.image_path,
            "message": self.message,
        }


@dataclass(frozen=True)
class Shapes:
    """Polygons (and uncompressed RLEs) to rasterise into one mask (COCO sources), at the size the
    annotation file declares (:func:`vmad_pipeline.datasets.masks.rasterise`)."""

    polygons: tuple[tuple[float, ...], ...]  # each (x0, y0, x1, y1, ...) in pixels
    width: int
    height: int
    rles: tuple[tuple[int, ...], ...] = ()  # COCO uncompressed RLE counts, column-major

    def signature(self) -> str:
        text = json.dumps(
            [self.width, self.height, self.polygons, self.rles], separators=(",", ":")
        )
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Item:
    """One image as a reader lists it; no file has been read yet."""

    category: str
    split: str
    image: str  # posix, relative to the source root
    mask: str | None = None  # posix, relative to the mask root; None for a normal image
    defect_name: str = ""
    view: str = ""
    shapes: Shapes | None = None  # set when ``mask`` is to be rasterised from polygons


@dataclass
class Listing:
    """What a reader found under one source root."""

    source: str
    root: Path
    mask_root: Path | None = None  # where masks live when not under ``root`` (rasterised masks)
    items: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, rule: str, file: str, message: str, image_path: str = "") -> None:
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}")
        self.problems.append(Problem(self.source, rule, file, message, image_path))

    @property
    def masks_at(self) -> Path:
        return self.mask_root or self.root


def raise_problems(
    problems: list[Problem] | list[dict[str, str]], limit: int = 40, rows: Sequence[str] = ()
) -> None:
    """IngestError listing every problem as ``[rule] message`` (identical lines once, the first
    ``limit``, then a count), then ``rows``: the manifest's rules the other rows broke (lines of
    ``validation.failed_rules``); nothing if there is no problem."""
    if not problems:
        return
    found = [p.as_dict() if isinstance(p, Problem) else p for p in problems]
    lines = list(dict.fromkeys(f"[{p['rule']}] {p['message']}" for p in found))
    more = len(lines) - limit
    also = ["and rows breaking the manifest's rules:", *rows] if rows else []
    raise IngestError(
        f"{len(problems)} bad input(s); nothing was written (set ingest.on_error: quarantine to "
        "ingest the rest and report these):\n"
        + "\n".join(lines[:limit] + ([f"... and {more} more"] if more > 0 else []) + also)
    )


def quarantine(
    manifest: pd.DataFrame, problems: Sequence[Mapping[str, str]], on_error: str
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Act on every problem (as dicts): ``quarantine`` leaves the rows they concern out;
    ``raise`` sets them aside too, so that the manifest's rules are checked on the rest, and
    the last ingest node raises naming both at once (:func:`raise_problems`; at once here when
    no row is left).

    Returns the rows kept and the quarantine report (the problems, the rows removed, counts per
    rule); IngestError if no row is left.
    """
    problems = list(problems)
    try:
        out, n_dropped = leave_out(manifest, problems)
    except IngestError:
        if on_error == "raise":
            raise_problems(problems)
        raise
    report = quarantine_report(on_error, problems, n_dropped)
    return out, report


def leave_out(
    manifest: pd.DataFrame, problems: Sequence[Mapping[str, str]]
) -> tuple[pd.DataFrame, int]:
    """The rows no problem concerns, and the number of images the problems name (rows left out,
    and images that never became rows); IngestError if no row is left."""
    drop = {(p["source"], p["image_path"]) for p in problems if p["image_path"]}
    keep = [
        (s, p) not in drop for s, p in zip(manifest["source"], manifest["image_path"], strict=True)
    ]
    out = manifest[keep].reset_index(drop=True)
    if out.empty:
        raise IngestError(
            f"no images left to ingest after quarantining {len(problems)} problem(s)"
            + ("" if not problems else f"; first: [{problems[0]['rule']}] {problems[0]['message']}")
        )
    if problems:
        logger.warning(
            "quarantined %d row(s) for %d problem(s); see the ingest_quarantine report",
            len(drop),
            len(problems),
        )
    return out, len(drop)


def quarantine_report(
    on_error: str,
    problems: Sequence[Mapping[str, str]],
    n_rows: int,
    earlier: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The quarantine report: ``problems`` (added to those of an ``earlier`` report) and the
    number of rows they removed, with counts per rule."""
    problems = [*(earlier or {}).get("problems", []), *problems]
    n_rows += int((earlier or {}).get("n_rows_quarantined", 0))
    return {
        "on_error": on_error,
        "n_problems": len(problems),
        "n_rows_quarantined": n_rows,  # images left out (a problem may concern no image)
        "by_rule": {rule: sum(p["rule"] == rule for p in problems) for rule in RULES},
        "rules": RULES,
        "problems": problems,
    }
