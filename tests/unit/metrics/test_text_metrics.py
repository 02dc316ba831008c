"""Text metrics: the parsing rules and the accuracies, on hand-checkable answers."""

from __future__ import annotations

import math

import pytest
import yaml
from helpers import REPO

from vmad_pipeline.annotation.geometry import LOCATIONS
from vmad_pipeline.annotation.taxonomy import Taxonomy
from vmad_pipeline.metrics.text import (
    answer_accuracy,
    balanced_answer_accuracy,
    broken_sentence,
    consistent_with,
    parse_defect_type,
    parse_location,
    parse_option,
    parse_yes_no,
)


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return Taxonomy.from_dict(yaml.safe_load((REPO / "conf/base/taxonomy.yml").read_text()))


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("Yes. There is a small scratch.", True),
        ("yes, the bottle is defective", True),
        ("No. No, the bottle looks normal.", False),
        ("  No", False),
        ("Yesterday it was fine", None),  # first word must be exactly yes/no
        ("There is no defect.", None),  # "no" is not the first word
        ("", None),
    ],
)
def test_parse_yes_no(answer: str, expected: bool | None) -> None:
    assert parse_yes_no(answer) is expected


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("There is a small crack on the top left of the bottle.", "top left"),
        ("A stain is visible at the Top-Right; it is tiny.", "top right"),
        ("The nut shows a dent located at the top.", "top"),
        ("a hole in the center area", "center"),
        ("on the laptop", None),  # whole words only
        ("No. The part looks normal.", None),
    ],
)
def test_parse_location(answer: str, expected: str | None) -> None:
    assert parse_location(answer) == expected


def test_every_grid_phrase_parses_to_itself() -> None:
    for phrase in LOCATIONS:
        assert parse_location(f"Yes. A scratch at the {phrase} of the part.") == phrase


def test_parse_defect_type_uses_synonyms_and_the_first_named(taxonomy: Taxonomy) -> None:
    assert parse_defect_type("Yes. Two scratches on the left.", taxonomy).name == "scratch"
    assert parse_defect_type("The part is dented and cracked.", taxonomy).name == "dent"
    assert parse_defect_type("A missing part at the top.", taxonomy).name == "missing_part"
    assert parse_defect_type("No. The part looks normal.", taxonomy) is None


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(A) Yes, there is.", "A"),
        ("C: a crack", "C"),
        ("A scratch on the top.", None),  # "A" is the article here; no option text either
        ("Yes, there is a defect.", "A"),  # the text of option A, as whole words
        ("No.", "B"),
        ("The answer is not known", None),  # "no" only inside "not" / "known"
        ("E.", None),  # not one of the options
    ],
)
def test_parse_option(answer: str, expected: str | None) -> None:
    options = {"A": "Yes.", "B": "No.", "C": "Crack."}
    assert parse_option(answer, options) == expected


def test_parse_option_ambiguous_text_is_none() -> None:
    assert parse_option("yes or no", {"A": "Yes.", "B": "No."}) is None


def test_answer_accuracy_counts_unparseable_as_wrong() -> None:
    labels = [0, 0, 0, 1]
    parsed = [False, False, False, None]  # 3 right, the anomalous one unparseable
    assert answer_accuracy(labels, parsed) == pytest.approx(0.75)
    # normal recall 3/3, anomalous recall 0/1 -> 0.5
    assert balanced_answer_accuracy(labels, parsed) == pytest.approx(0.5)


def test_balanced_accuracy_hand_example() -> None:
    labels = [1, 1, 1, 1, 0, 0]
    parsed = [True, True, True, False, True, None]  # anomalous 3/4, normal 0/2
    assert answer_accuracy(labels, parsed) == pytest.approx(3 / 6)
    assert balanced_answer_accuracy(labels, parsed) == pytest.approx((0.75 + 0.0) / 2)


def test_balanced_accuracy_one_class_is_nan_and_bad_input_raises() -> None:
    assert math.isnan(balanced_answer_accuracy([1, 1], [True, True]))
    with pytest.raises(ValueError, match="2 labels but 1 parsed"):
        answer_accuracy([0, 1], [True])
    with pytest.raises(ValueError, match="0/1"):
        answer_accuracy([0, 2], [True, False])


@pytest.mark.parametrize(
    "answer,broken",
    [
        ("The part.", False),
        ("There is a small crack on the center of the part.", False),
        ("It is small.", False),
        ("It is a crack.", False),
        ("It is a small.", True),  # the break-off issue 26 saw
        ("It is a", True),
        ("A crack at the", True),
        ("No, the part.", False),
        ("The damage is at the.", True),
        ("", True),
        ("   ", True),
    ],
)
def test_a_broken_sentence_is_one_that_breaks_off(answer, broken):
    assert broken_sentence(answer) is broken


YES = "Yes. There is a crack at the top left."


@pytest.mark.parametrize(
    "answer,detection,names_type,expected",
    [
        ("A crack is visible at the top left of the part; it is small.", YES, True, True),
        ("There is a small scratch on the top left of the part.", YES, True, False),
        ("There is a small crack on the bottom of the part.", YES, True, False),
        ("No, the part looks normal; no defect is visible.", YES, False, False),
        ("The part looks normal.", YES, False, False),
        ("Scrap the part; do not repair it.", YES, False, True),  # names neither: no contradiction
        ("Check the line where such defects arise.", YES, False, True),  # no type asked of it
        (
            "A small anomaly appears in the top left area.",
            "Yes. There is an anomaly at the top left.",
            True,
            True,
        ),
        (
            "A small crack appears in the top left area.",
            "Yes. There is an anomaly at the top left.",
            True,
            False,
        ),
        ("No, the part looks normal; no defect is visible.", "No. It looks normal.", False, True),
        ("There is a crack at the top.", "No. It looks normal.", True, False),
    ],
)
def test_a_long_answer_is_consistent_when_its_detection_answer_contradicts_none_of_it(
    taxonomy, answer, detection, names_type, expected
):
    assert consistent_with(answer, detection, taxonomy, names_type=names_type) is expected
