"""The ``profile`` parameters (``conf/base/parameters_profile.yml``): which normal images make a
product profile, and its name (docs/references.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vmad_pipeline.configs.base import check, from_dict
from vmad_pipeline.configs.predict import DEFAULT_MAX_PIXELS

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str) -> str:
    """A profile name: 1-64 letters, digits, ``_``, ``.``, ``-``, not starting with ``.`` (no
    path characters: it names a folder). ValueError otherwise."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"profile name {name!r}: use 1-64 letters, digits, '_', '.', '-' (no path characters, "
            "not starting with '.')"
        )
    return name


@dataclass(frozen=True)
class ProfileConfig:
    name: str = ""  # the profile's name: letters, digits, '_', '.', '-'
    category: str = ""  # the object name it inspects, as predict.category
    images: str = ""  # a folder (every image under it) or a glob of normal images
    seed: int = 0  # the coreset's draw
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        check(bool(self.name), "name", 'give one: --params "profile.name=...,profile.category=..."')
        check(bool(self.images), "images", "a folder or a glob of normal images of the product")
        check(bool(self.category), "category", "the object name the profile inspects")
        try:
            check_name(self.name)
        except ValueError as err:
            check(False, "name", str(err))


def parse_profile_params(params: dict[str, Any] | None) -> ProfileConfig:
    return from_dict(ProfileConfig, params, "profile")
