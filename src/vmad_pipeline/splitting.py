"""Zero-shot splits of the manifest: which classes train, which are tested, and the leak check.

Two protocols (``split.protocol``):

- ``cross_category``: the classes of ``sources`` (all sources of the manifest when empty) are
  divided into training and unseen test classes: explicit lists, else a seeded draw of
  ``test_count`` classes, else of ``test_fraction`` of them (paper: 16 training / 8 test on RIAD).
- ``cross_dataset``: train on every class of ``train_sources``, test on every class of
  ``test_sources`` (e.g. RIAD's sources -> MVTec AD, VisA, WFDD); the class lists may restrict
  either side.

What a class is. A class is a category *name*: ``screw`` from MPDD and ``screw`` from MVTec AD are
the same kind of object, so a model that trained on one has seen the other. In ``cross_category``
a name therefore goes to one side for every source at once; in ``cross_dataset`` a test class name
that is also a training source's class is a leak unless ``shared_names`` says otherwise
(``exclude``: drop it from training, logged; ``allow``: accept it, the two being told apart by
their sources, which the protocol keeps disjoint). A row belongs to a side when its source is
one of the side's sources and its category one of the side's classes; :func:`split_rows` is the
one place where this rule lives, and it re-runs the leak check, by class and by image content
(``sha256``), every time rows are selected.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

import pandas as pd

from vmad_pipeline.configs.base import ConfigError
from vmad_pipeline.configs.split import PROTOCOLS, SplitConfig, parse_split_params

log = logging.getLogger(__name__)

SPLIT_KEYS = (
    "protocol",
    "seed",
    "train_sources",
    "test_sources",
    "train_classes",
    "test_classes",
    "shared_names",
)
MAX_NAMED = 10  # images named in a leak message


class SplitLeakError(ValueError):
    """A test class (or a test image) would be seen in training."""


def _known(manifest: pd.DataFrame, wanted: tuple[str, ...], key: str) -> list[str]:
    """``wanted`` sources (all of the manifest's when empty), each checked to be in it."""
    available = sorted(manifest["source"].unique())
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise ConfigError(
            f"split.{key}: unknown source(s) {', '.join(unknown)}; "
            f"the manifest holds: {', '.join(available)}"
        )
    return sorted(wanted) if wanted else available


def _classes_of(manifest: pd.DataFrame, sources: list[str]) -> list[str]:
    return sorted(manifest.loc[manifest["source"].isin(sources), "category"].unique())


def _check_listed(listed: tuple[str, ...], available: list[str], key: str, where: str) -> None:
    unknown = sorted(set(listed) - set(available))
    if unknown:
        raise ConfigError(
            f"split.{key}: unknown class(es) {', '.join(unknown)} in {where}; "
            f"available: {', '.join(available)}"
        )


def _cross_category(manifest: pd.DataFrame, cfg: SplitConfig) -> dict[str, Any]:
    sources = _known(manifest, cfg.sources, "sources")
    classes = _classes_of(manifest, sources)
    where = "sources " + ", ".join(sources)
    _check_listed(cfg.test_classes, classes, "test_classes", where)
    _check_listed(cfg.train_classes, classes, "train_classes", where)
    if len(classes) < 2:
        raise ConfigError(
            f"split: cross_category needs at least two classes; {where} hold {classes}"
        )
    train, test = list(cfg.train_classes), list(cfg.test_classes)
    if not test:
        pool = [c for c in classes if c not in train]
        if cfg.test_count is not None:
            if cfg.test_count > len(classes) - 1:
                raise ConfigError(
                    f"split.test_count: {cfg.test_count} test classes leave no training class "
                    f"({len(classes)} classes in {where})"
                )
            n_test = cfg.test_count
        else:
            n_test = max(1, min(len(classes) - 1, round(cfg.test_fraction * len(classes))))
        test = random.Random(cfg.seed).sample(pool, min(n_test, len(pool)))
    if not train:
        train = [c for c in classes if c not in test]
    return {"train_sources": sources, "test_sources": sources, "train": train, "test": test}


def _cross_dataset(manifest: pd.DataFrame, cfg: SplitConfig) -> dict[str, Any]:
    train_sources = _known(manifest, cfg.train_sources, "train_sources")
    test_sources = _known(manifest, cfg.test_sources, "test_sources")
    train_available = _classes_of(manifest, train_sources)
    test_available = _classes_of(manifest, test_sources)
    _check_listed(
        cfg.train_classes, train_available, "train_classes", "sources " + ", ".join(train_sources)
    )
    _check_listed(
        cfg.test_classes, test_available, "test_classes", "sources " + ", ".join(test_sources)
    )
    train = list(cfg.train_classes) or train_available
    test = list(cfg.test_classes) or test_available
    shared = sorted(set(train) & set(test))
    if shared and cfg.shared_names == "exclude":
        log.warning(
            "split: dropping from training the classes also tested (shared_names: exclude): %s",
            ", ".join(shared),
        )
        train = [c for c in train if c not in shared]
    return {
        "train_sources": train_sources,
        "test_sources": test_sources,
        "train": train,
        "test": test,
    }


def make_split(manifest: pd.DataFrame, params: dict[str, Any] | None) -> dict[str, Any]:
    """The splits dict of ``manifest`` for the ``split`` parameters, leak-checked.

    Keys: ``protocol``, ``seed``, ``train_sources``, ``test_sources``, ``train_classes``,
    ``test_classes``, ``shared_names`` (what :func:`split_rows` needs), ``params`` (the resolved
    parameters, to reproduce it) and ``counts`` (images per side).
    """
    cfg = parse_split_params(params)
    chosen = (_cross_category if cfg.protocol == "cross_category" else _cross_dataset)(
        manifest, cfg
    )
    if not chosen["train"] or not chosen["test"]:
        side = "training" if not chosen["train"] else "test"
        raise ConfigError(f"split: the {side} class list is empty ({cfg.protocol})")
    splits = {
        "protocol": cfg.protocol,
        "seed": cfg.seed,
        "train_sources": chosen["train_sources"],
        "test_sources": chosen["test_sources"],
        "train_classes": sorted(chosen["train"]),
        "test_classes": sorted(chosen["test"]),
        "shared_names": cfg.shared_names,
        "params": {  # as stored in JSON: lists, not tuples
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()
        },
    }
    train_rows, test_rows = split_rows(manifest, splits)
    splits["counts"] = {
        "train_images": len(train_rows),
        "test_images": len(test_rows),
        "test_anomalous": int((test_rows["label"] == 1).sum()),
    }
    log.info(
        "%s split | train (%s): %s | unseen test (%s): %s",
        cfg.protocol,
        ", ".join(splits["train_sources"]),
        ", ".join(splits["train_classes"]),
        ", ".join(splits["test_sources"]),
        ", ".join(splits["test_classes"]),
    )
    return splits


def check_no_leak(splits: dict[str, Any]) -> None:
    """Raise :class:`SplitLeakError` if a test class could be seen in training (by name, or, in
    cross_dataset, by source); a malformed splits dict raises ValueError naming its keys."""
    missing = [k for k in SPLIT_KEYS if k not in splits]
    if missing:
        raise ValueError(
            f"splits: missing key(s) {', '.join(missing)}; re-run the split pipeline "
            "(kedro run --pipeline split)"
        )
    if splits["protocol"] not in PROTOCOLS:
        raise ValueError(f"splits.protocol: unknown protocol {splits['protocol']!r}")
    if splits["protocol"] == "cross_dataset":
        both = sorted(set(splits["train_sources"]) & set(splits["test_sources"]))
        if both:
            raise SplitLeakError(f"test sources are also training sources: {', '.join(both)}")
        if splits["shared_names"] == "allow":
            return  # same names, different sources: different classes by the user's choice
    elif splits["train_sources"] != splits["test_sources"]:
        raise ValueError("splits: cross_category trains and tests on the same sources")
    leaked = sorted(set(splits["train_classes"]) & set(splits["test_classes"]))
    if leaked:
        raise SplitLeakError(f"test classes leak into training: {', '.join(leaked)}")


def _side(manifest: pd.DataFrame, sources: list[str], classes: list[str]) -> pd.Series:
    return manifest["source"].isin(sources) & manifest["category"].isin(classes)


def split_rows(manifest: pd.DataFrame, splits: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, test rows) of ``manifest`` for ``splits``: the one place of the rule.

    Training: every image of the training classes in the training sources (their own train and
    test folders alike). Test: the test-folder images of the test classes in the test sources.
    Raises :class:`SplitLeakError` if a test class or a test image's content (``sha256``) is in
    training, ValueError if either side has no image.
    """
    check_no_leak(splits)
    train_mask = _side(manifest, splits["train_sources"], splits["train_classes"])
    test_mask = _side(manifest, splits["test_sources"], splits["test_classes"]) & (
        manifest["split"] == "test"
    )
    train, test = manifest[train_mask], manifest[test_mask]
    if train.empty:
        raise ValueError(
            "no training images: the split's training classes "
            f"({', '.join(splits['train_classes'])}) are not in the manifest's sources "
            f"{', '.join(splits['train_sources'])}"
        )
    if test.empty:
        raise ValueError(
            "no test images: the split's test classes "
            f"({', '.join(splits['test_classes'])}) have no test images in the sources "
            f"{', '.join(splits['test_sources'])}"
        )
    seen = test[test["sha256"].isin(set(train["sha256"]))]
    if not seen.empty:
        where = train.drop_duplicates("sha256").set_index("sha256")
        named = [
            f"{r.source}:{r.image_path} (= training image "
            f"{where.at[r.sha256, 'source']}:{where.at[r.sha256, 'image_path']})"
            for r in seen.head(MAX_NAMED).itertuples()
        ]
        more = f" (+{len(seen) - MAX_NAMED} more)" if len(seen) > MAX_NAMED else ""
        raise SplitLeakError(
            f"{len(seen)} test image(s) have the same content (sha256) as training images: "
            + "; ".join(named)
            + more
        )
    return train.reset_index(drop=True), test.reset_index(drop=True)


# --------------------------------------------------------------------------- what a model saw


def split_hash(splits: dict[str, Any]) -> str:
    """A short, stable digest of a split (what each side holds and how it was drawn)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(splits, sort_keys=True, default=str).encode()).hexdigest()[:16]


def training_record(train_rows: pd.DataFrame, splits: dict[str, Any]) -> dict[str, Any]:
    """What a model was trained on, recorded with it: its classes, its sources, the (source,
    class) pairs, the split's hash and whether the split allowed a test class to share its name
    with a training class of another source (``shared_names: allow``)."""
    pairs = sorted(set(zip(train_rows["source"], train_rows["category"], strict=True)))
    return {
        "classes": sorted({c for _, c in pairs}),
        "sources": sorted({s for s, _ in pairs}),
        "pairs": [list(p) for p in pairs],
        "split_hash": split_hash(splits),
        "shared_names": (splits.get("params") or {}).get("shared_names", "error"),
    }


def seen_mask(rows: pd.DataFrame, record: dict[str, Any]) -> pd.Series:
    """Which rows show a class the model was trained on. A class is its name across sources
    (docs/splits.md), unless the model's split allowed shared names, where a class is a (source,
    name) pair."""
    if not record:
        return pd.Series(False, index=rows.index)
    if record.get("shared_names") == "allow":
        pairs = {tuple(p) for p in record["pairs"]}
        return pd.Series(
            [(s, c) in pairs for s, c in zip(rows["source"], rows["category"], strict=True)],
            index=rows.index,
        )
    return rows["category"].isin(set(record["classes"]))
