import pandas as pd
import pytest

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.pipelines.split.nodes import SplitLeakError, check_no_leak, cross_category_split
from vmad_pipeline.pipelines.train.nodes import training_rows

CLASSES = [f"c{i}" for i in range(10)]


def manifest():
    return pd.DataFrame(
        {"category": [c for c in CLASSES for _ in range(3)], "split": "test", "label": 0}
    )


def test_seeded_and_disjoint():
    a = cross_category_split(manifest(), {"seed": 1, "test_fraction": 0.3})
    b = cross_category_split(manifest(), {"seed": 1, "test_fraction": 0.3})
    c = cross_category_split(manifest(), {"seed": 2, "test_fraction": 0.3})
    assert a == b and a["test_classes"] != c["test_classes"]
    assert len(a["test_classes"]) == 3 and not set(a["test_classes"]) & set(a["train_classes"])
    assert sorted(a["test_classes"] + a["train_classes"]) == CLASSES


def test_explicit_lists():
    s = cross_category_split(manifest(), {"test_classes": ["c0", "c1"]})
    assert s["test_classes"] == ["c0", "c1"] and "c0" not in s["train_classes"]


def test_leak_fails_loudly():
    with pytest.raises(SplitLeakError, match="c1"):
        cross_category_split(
            manifest(), {"test_classes": ["c0", "c1"], "train_classes": ["c1", "c2"]}
        )
    with pytest.raises(SplitLeakError):
        check_no_leak({"train_classes": ["a"], "test_classes": ["a"]})


def test_training_refuses_a_leaking_split():
    with pytest.raises(SplitLeakError):
        training_rows(manifest(), {"train_classes": ["c0"], "test_classes": ["c0"]})


def test_unknown_class_is_named():
    with pytest.raises(ConfigError, match="nope"):
        cross_category_split(manifest(), {"test_classes": ["nope"]})
