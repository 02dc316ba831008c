"""Zero-shot splits (:mod:`vmad_pipeline.splitting`): both protocols, seeded draws, the leak check
(class and content), errors."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import REPO
from helpers.trees import split_manifest

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.datasets.synthetic import AVAILABLE_CLASSES
from vmad_pipeline.splitting import SplitLeakError, check_no_leak, make_split, split_rows

CLASSES = [f"c{i}" for i in range(10)]


ONE = split_manifest({"syn": CLASSES})
# Three sources; `screw` in two of them, `pcb` in a training and a test source.
MULTI = split_manifest(
    {
        "realiad": ["pcb", "toy", "usb", "screw"],
        "mpdd": ["screw", "bracket"],
        "mvtec": ["bottle", "pcb"],
        "visa": ["candle", "fryum"],
    }
)


def default_params() -> dict:
    return yaml.safe_load((REPO / "conf/base/parameters_split.yml").read_text())["split"]


def test_default_keeps_the_classes_of_the_embedded_default() -> None:
    """Synthetic source, cross_category, fraction 0.4, seed 0: the classes chosen before the
    protocols were added (recorded from that code), so trained models and figures stay valid."""
    frame = split_manifest({"synthetic": list(AVAILABLE_CLASSES)})
    splits = make_split(frame, default_params())
    assert splits["test_classes"] == [
        "bottle_cap",
        "hex_nut",
        "pcb",
        "striped_fabric",
        "woven_cloth",
    ]
    assert splits["train_classes"] == sorted(set(AVAILABLE_CLASSES) - set(splits["test_classes"]))
    five = split_manifest({"synthetic": ["woven_cloth", "carpet", "washer", "screw", "pcb"]})
    assert make_split(five, default_params())["test_classes"] == ["washer", "woven_cloth"]


def test_stored_splits_reproduce_and_survive_json() -> None:
    splits = make_split(ONE, {"seed": 3, "test_count": 4})
    assert json.loads(json.dumps(splits)) == splits
    assert splits["params"]["seed"] == 3 and splits["params"]["test_count"] == 4
    assert make_split(ONE, splits["params"]) == splits  # the stored parameters rebuild it
    assert splits["counts"] == {"train_images": 6 * 4, "test_images": 4 * 2, "test_anomalous": 4}


def test_seeded_and_disjoint() -> None:
    a = make_split(ONE, {"seed": 1, "test_fraction": 0.3})
    b = make_split(ONE, {"seed": 1, "test_fraction": 0.3})
    c = make_split(ONE, {"seed": 2, "test_fraction": 0.3})
    assert a == b and a["test_classes"] != c["test_classes"]
    assert len(a["test_classes"]) == 3 and not set(a["test_classes"]) & set(a["train_classes"])
    assert sorted(a["test_classes"] + a["train_classes"]) == CLASSES


def test_count_wins_over_fraction_and_lists_over_both() -> None:
    assert len(make_split(ONE, {"test_count": 8, "test_fraction": 0.1})["test_classes"]) == 8
    s = make_split(ONE, {"test_classes": ["c0", "c1"], "test_count": 5})
    assert s["test_classes"] == ["c0", "c1"] and s["train_classes"] == CLASSES[2:]
    s = make_split(ONE, {"train_classes": ["c5", "c6"], "test_count": 3, "seed": 0})
    assert s["train_classes"] == ["c5", "c6"] and len(s["test_classes"]) == 3
    assert not {"c5", "c6"} & set(s["test_classes"])


def test_paper_riad_protocol_16_train_8_test() -> None:
    riad = split_manifest({"a": [f"a{i}" for i in range(14)], "b": [f"b{i}" for i in range(10)]})
    s = make_split(riad, {"test_count": 8, "seed": 7})
    assert (len(s["train_classes"]), len(s["test_classes"])) == (16, 8)
    assert s["train_sources"] == s["test_sources"] == ["a", "b"]


def test_cross_category_a_shared_name_is_one_class_on_one_side() -> None:
    """`screw` (realiad and mpdd) is one class: both sources' screws land on the same side."""
    for seed in range(6):
        s = make_split(MULTI, {"sources": ["realiad", "mpdd"], "test_fraction": 0.4, "seed": seed})
        train, test = split_rows(MULTI, s)
        assert set(train["source"]) | set(test["source"]) <= {"realiad", "mpdd"}
        side = train if "screw" in s["train_classes"] else test
        assert set(side.loc[side["category"] == "screw", "source"]) == {"realiad", "mpdd"}
        assert not set(train["category"]) & set(test["category"])


def test_split_rows_sides() -> None:
    s = make_split(ONE, {"test_classes": ["c0", "c1"]})
    train, test = split_rows(ONE, s)
    # training: every image of a training class (both folders); test: the test folders only
    assert len(train) == 8 * 4 and set(train["split"]) == {"train", "test"}
    assert len(test) == 2 * 2 and set(test["split"]) == {"test"}
    assert set(test["category"]) == {"c0", "c1"} and list(test.index) == [0, 1, 2, 3]


def test_cross_dataset() -> None:
    s = make_split(
        MULTI,
        {
            "protocol": "cross_dataset",
            "train_sources": ["realiad", "mpdd"],
            "test_sources": ["visa"],
        },
    )
    assert s["train_classes"] == ["bracket", "pcb", "screw", "toy", "usb"]
    assert s["test_classes"] == ["candle", "fryum"]
    train, test = split_rows(MULTI, s)
    assert set(train["source"]) == {"realiad", "mpdd"} and len(train) == 6 * 4
    assert set(test["source"]) == {"visa"} and len(test) == 2 * 2
    restricted = make_split(
        MULTI,
        {
            "protocol": "cross_dataset",
            "train_sources": ["realiad"],
            "test_sources": ["visa", "mvtec"],
            "train_classes": ["toy", "usb"],
            "test_classes": ["bottle", "candle"],
        },
    )
    train, test = split_rows(MULTI, restricted)
    assert set(train["category"]) == {"toy", "usb"}
    assert set(zip(test["source"], test["category"], strict=True)) == {
        ("mvtec", "bottle"),
        ("visa", "candle"),
    }


def test_cross_dataset_shared_names() -> None:
    """mvtec's `pcb` is tested while realiad's `pcb` trains: a leak unless the user says how."""
    params = {"protocol": "cross_dataset", "train_sources": ["realiad"], "test_sources": ["mvtec"]}
    with pytest.raises(SplitLeakError, match="pcb"):
        make_split(MULTI, params)
    excluded = make_split(MULTI, {**params, "shared_names": "exclude"})
    assert excluded["train_classes"] == ["screw", "toy", "usb"]
    assert excluded["test_classes"] == ["bottle", "pcb"]
    allowed = make_split(MULTI, {**params, "shared_names": "allow"})
    train, test = split_rows(MULTI, allowed)
    assert "pcb" in allowed["train_classes"] and set(train["source"]) == {"realiad"}
    assert set(test["source"]) == {"mvtec"}


def test_class_leak_fails_loudly() -> None:
    with pytest.raises(SplitLeakError, match="c1"):
        make_split(ONE, {"test_classes": ["c0", "c1"], "train_classes": ["c1", "c2"]})
    good = make_split(ONE, {"test_classes": ["c0"]})
    tampered = {**good, "train_classes": good["train_classes"] + ["c0"]}
    with pytest.raises(SplitLeakError, match="c0"):
        check_no_leak(tampered)
    with pytest.raises(SplitLeakError, match="c0"):  # every selection re-runs the check
        split_rows(ONE, tampered)
    dataset = make_split(
        MULTI, {"protocol": "cross_dataset", "train_sources": ["mpdd"], "test_sources": ["visa"]}
    )
    with pytest.raises(SplitLeakError, match="sources.*visa"):
        check_no_leak({**dataset, "train_sources": ["mpdd", "visa"]})
    with pytest.raises(ValueError, match="missing key.*train_sources"):
        check_no_leak({"train_classes": ["a"], "test_classes": ["b"]})


def test_content_leak_names_the_images() -> None:
    """A test image whose bytes are also a training image (another class or another source)."""
    frame = ONE.copy()
    test_row = frame.index[(frame.category == "c0") & (frame.label == 1)][0]
    train_row = frame.index[(frame.category == "c5") & (frame.split == "train")][0]
    frame.loc[test_row, "sha256"] = frame.loc[train_row, "sha256"]
    with pytest.raises(
        SplitLeakError, match=r"syn:c0/test/3.png \(= training image syn:c5/train/0"
    ):
        make_split(frame, {"test_classes": ["c0"]})
    # A duplicate inside the training side is no leak.
    frame = ONE.copy()
    frame.loc[frame.index[frame.category == "c5"], "sha256"] = "same"
    make_split(frame, {"test_classes": ["c0"]})
    # Across sources (cross_dataset).
    frame = MULTI.copy()
    test_row = frame.index[(frame.source == "visa") & (frame.split == "test")][0]
    frame.loc[test_row, "sha256"] = frame.loc[0, "sha256"]
    with pytest.raises(SplitLeakError, match="visa:candle/test/2.png"):
        make_split(
            frame,
            {"protocol": "cross_dataset", "train_sources": ["realiad"], "test_sources": ["visa"]},
        )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"test_classes": ["nope"]}, "test_classes: unknown class.*nope"),
        ({"train_classes": ["c0", "zz"]}, "train_classes: unknown class.*zz"),
        ({"sources": ["syn", "nope"]}, "sources: unknown source.*nope"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": "half"}, "test_fraction"),
        ({"test_count": 0}, "test_count"),
        ({"test_count": 10}, "test_count.*no training class"),
        ({"protocol": "leave_one_out"}, "protocol"),
        ({"shared_names": "maybe"}, "shared_names"),
        ({"test_classes": ["c0", "c0"]}, "test_classes: listed twice.*c0"),
        ({"tests_classes": ["c0"]}, r"split\.tests_classes: unknown parameter"),
        ({"train_sources": ["syn"]}, "train_sources: used by protocol cross_dataset only"),
        ({"protocol": "cross_dataset", "test_sources": ["syn"]}, "train_sources: must name"),
        ({"protocol": "cross_dataset", "train_sources": ["syn"]}, "test_sources: must name"),
        (
            {"protocol": "cross_dataset", "train_sources": ["syn"], "test_sources": ["syn"]},
            "test_sources: also training sources: syn",
        ),
        (
            {"protocol": "cross_dataset", "train_sources": ["syn"], "test_sources": ["x"]},
            "test_sources: unknown source.*x",
        ),
        (
            {"protocol": "cross_dataset", "sources": ["syn"]},
            "sources: used by protocol cross_category",
        ),
    ],
)
def test_bad_parameters_are_named(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_split(ONE, params)


def test_empty_sides_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least two classes"):
        make_split(split_manifest({"syn": ["only"]}), {})
    everything_tested = {
        "protocol": "cross_dataset",
        "train_sources": ["mpdd"],
        "test_sources": ["realiad"],
        "train_classes": ["screw"],
        "shared_names": "exclude",
    }
    with pytest.raises(ConfigError, match="training class list is empty"):
        make_split(MULTI, everything_tested)
    no_test_folder = ONE[~((ONE.category == "c0") & (ONE.split == "test"))]
    with pytest.raises(ValueError, match="no test images.*c0"):
        make_split(no_test_folder, {"test_classes": ["c0"]})
