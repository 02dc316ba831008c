"""Deterministic template backend of the RIAD annotation step.

Writes the three answers of an anomalous image (description, impact analysis, suggestion) from
the defect type, the object class and the mask geometry, with no model and no network. Several
phrasings per answer; the phrasing is chosen by ``seed``, so the same inputs give the same text.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from vmad_pipeline.annotation.taxonomy import DefectType, normalise_name

__all__ = ["defect_family", "template_qa", "normal_answer"]

# Defect family of each taxonomy name; names not listed (custom taxonomies, "anomaly") are "generic".
_FAMILY: dict[str, str] = {
    "scratch": "surface",
    "stain": "surface",
    "contamination": "surface",
    "bubble": "surface",
    "fold": "surface",
    "crack": "structural",
    "hole": "structural",
    "deformation": "structural",
    "dent": "structural",
    "broken": "structural",
    "cut": "structural",
    "missing_part": "assembly",
    "misalignment": "assembly",
    "foreign_object": "assembly",
    "discoloration": "colour",
}

_DESCRIPTIONS: tuple[str, ...] = (
    "There is {a_size} {defect} on the {location} of the {obj}{regions}.",
    "The {obj} shows {a_size} {defect} located at the {location}{regions}.",
    "{A_defect} is visible at the {location} of the {obj}; it is {size}{regions}.",
    "Yes, the {obj} is defective: {a_size} {defect} appears in the {location} area{regions}.",
)

_IMPACT: dict[str, tuple[str, ...]] = {
    "surface": (
        "The {defect} affects the surface of the {obj}. It mainly degrades appearance and finish, "
        "and it can hide or start corrosion and wear; a {size} surface defect usually fails the cosmetic specification.",
        "A {defect} on the {obj} lowers its visual quality and may trap dirt or moisture; "
        "if it grows or covers functional surfaces it can reduce coating protection and customer acceptance.",
    ),
    "structural": (
        "The {defect} weakens the structure of the {obj}. It can reduce strength and sealing, "
        "and it may grow under load or vibration until the part fails in use.",
        "A {defect} compromises the mechanical integrity of the {obj}; even a {size} one can concentrate "
        "stress, break tightness or lead to a sudden failure, which is a safety and reliability risk.",
    ),
    "assembly": (
        "The {defect} means the {obj} is not assembled as specified. The part may not fit, "
        "function or connect correctly, so the product can fail its functional test or in the field.",
        "With a {defect}, the {obj} deviates from its design; downstream assembly can jam or "
        "malfunction, and the unit does not meet its functional requirements.",
    ),
    "colour": (
        "The {defect} changes the colour of the {obj}. It is mainly a cosmetic problem, but it can "
        "indicate overheating, contamination or a wrong material or process setting.",
        "A {defect} makes the {obj} look inconsistent with good parts; customers may reject it, and "
        "the colour change can point to degraded material properties.",
    ),
    "generic": (
        "The {defect} makes the {obj} deviate from a normal part; depending on its nature it can "
        "affect appearance, function or reliability, so the part should not pass as good.",
        "An unexplained {defect} on the {obj} is a quality risk: it may hide a functional defect "
        "and must be assessed before the part is used.",
    ),
}

_SUGGESTION: dict[str, tuple[str, ...]] = {
    "surface": (
        "Reject or rework the {obj} (clean, polish or recoat the {location} area) and check handling, "
        "packaging and the cleanliness of the line where such surface defects arise.",
        "Send the {obj} to rework or scrap, inspect the tooling and conveyors that touch the surface, "
        "and tighten cleaning and handling procedures.",
    ),
    "structural": (
        "Scrap the {obj}; do not repair a {defect}. Check the forming or machining step and the "
        "material batch for the root cause, and inspect neighbouring parts from the same lot.",
        "Remove the {obj} from the line and quarantine its lot; review process forces, tool wear "
        "and material quality, and add a check for this {defect} at the station that causes it.",
    ),
    "assembly": (
        "Return the {obj} to the assembly station to correct it, then verify the feeder, fixture "
        "and placement settings that let the {defect} through.",
        "Rework the {obj} (replace, reposition or remove the affected component) and add a "
        "presence-and-position check to the assembly step.",
    ),
    "colour": (
        "Hold the {obj} for review against colour limits, rework or scrap it, and check "
        "temperatures, material batch and finishing parameters of the process.",
        "Compare the {obj} with a reference sample under controlled light; if out of tolerance, "
        "reject it and verify the process settings that affect colour.",
    ),
    "generic": (
        "Hold the {obj} for manual inspection at the {location} area, classify the defect, and "
        "reject the part if it cannot be shown to be harmless.",
        "Quarantine the {obj}, have an inspector review the marked region and trace the process "
        "step that produced it.",
    ),
}

_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def defect_family(defect: DefectType) -> str:
    """ "surface", "structural", "assembly", "colour" or "generic"."""
    return _FAMILY.get(defect.name, "generic")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def template_qa(
    *, category: str, defect: DefectType, geometry: Mapping[str, Any], seed: int
) -> dict[str, str]:
    """Description, impact and suggestion for one anomalous image.

    ``geometry`` is :func:`~vmad_pipeline.annotation.geometry.mask_geometry`'s dict (uses
    ``location``, ``size``, ``n_regions``). The description names the defect type (``_`` read as a
    space) and the location phrase. Same inputs and seed -> same text.
    """
    rng = random.Random(seed)
    name = normalise_name(defect.name)
    obj = normalise_name(category) or "object"
    location = str(geometry.get("location") or "center")
    size = str(geometry.get("size") or "small")
    n = int(geometry.get("n_regions") or 1)
    regions = "" if n <= 1 else f", spread over {_NUMBERS.get(n, str(n))} separate areas"
    fields = {
        "defect": name,
        "obj": obj,
        "location": location,
        "size": size,
        "regions": regions,
        "a_size": f"{_article(size)} {size}",
        "A_defect": f"{_article(name).capitalize()} {name}",
    }
    family = defect_family(defect)
    return {
        "description": rng.choice(_DESCRIPTIONS).format(**fields),
        "impact": rng.choice(_IMPACT[family]).format(**fields),
        "suggestion": rng.choice(_SUGGESTION[family]).format(**fields),
    }


def normal_answer(category: str) -> str:
    """The answer for a normal image of ``category``."""
    return f"No, the {normalise_name(category) or 'object'} looks normal; no defect is visible."
