"""Split: cross-category (zero-shot) class split, seeded and stored, with a leak check."""

from __future__ import annotations

import logging
import random
from typing import Any

import pandas as pd

from vmad_pipeline.configs import ConfigError

log = logging.getLogger(__name__)


class SplitLeakError(ValueError):
    """A test class (or a test image) would be seen in training."""


def check_no_leak(splits: dict[str, Any]) -> None:
    leaked = sorted(set(splits["train_classes"]) & set(splits["test_classes"]))
    if leaked:
        raise SplitLeakError(f"test classes leak into training: {', '.join(leaked)}")


def cross_category_split(manifest: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """Choose test classes (explicit list, else a seeded fraction); the rest train."""
    classes = sorted(manifest["category"].unique())
    test = list(params.get("test_classes") or [])
    train = list(params.get("train_classes") or [])
    unknown = sorted(set(test + train) - set(classes))
    if unknown:
        raise ConfigError(f"split: unknown class(es) {unknown}; available: {', '.join(classes)}")
    if not test:
        frac = params.get("test_fraction", 0.4)
        if not 0 < frac < 1:
            raise ConfigError(f"split.test_fraction: must be in (0, 1), got {frac}")
        n_test = max(1, min(len(classes) - 1, round(frac * len(classes))))
        pool = [c for c in classes if c not in train]
        test = sorted(random.Random(params.get("seed", 0)).sample(pool, min(n_test, len(pool))))
    if not train:
        train = [c for c in classes if c not in test]
    splits = {
        "protocol": "cross_category",
        "seed": params.get("seed", 0),
        "train_classes": sorted(train),
        "test_classes": sorted(test),
    }
    check_no_leak(splits)
    if not splits["train_classes"] or not splits["test_classes"]:
        raise ConfigError("split: both the training and the test class lists must be non-empty")
    log.info(
        "train classes: %s | unseen test classes: %s",
        ", ".join(splits["train_classes"]),
        ", ".join(splits["test_classes"]),
    )
    return splits
