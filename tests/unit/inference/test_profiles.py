"""Product profiles: built from normal images, stored whole, refused with another backbone or
model, bad names and bad folders refused before anything is written."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers.models import SMALL_CFG, tiny_tokenizer
from PIL import Image

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.configs.evaluate import parse_evaluate_params
from vmad_pipeline.configs.model import ReferenceCueConfig
from vmad_pipeline.configs.profile import parse_profile_params
from vmad_pipeline.inference.profiles import (
    ProfileError,
    build_profile,
    check_name,
    load_profile,
    model_fingerprint,
    read_references,
    save_profile,
)
from vmad_pipeline.inference.service import Detector
from vmad_pipeline.models.build import build_vmad

CUE_CFG = dataclasses.replace(SMALL_CFG, references=ReferenceCueConfig(enabled=True))


@pytest.fixture(scope="module")
def detector():
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = build_vmad(CUE_CFG, tok, train_classes=["screw"]).eval()
    cfg = parse_evaluate_params(
        {
            "max_new_tokens": 3,
            "progress": False,
            "follow_ups": False,
            "hierarchy": {"enabled": False},
        }
    )
    return Detector.for_model(model, tok, cfg, strict=False)


def _folder(tmp_path, n=3, size=40):
    folder = tmp_path / "normal"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size + i, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    return folder


def _profile(detector, tmp_path, name="line-1"):
    files = read_references(str(_folder(tmp_path)), 10**7)
    images = torch.stack([detector.tensor(img) for _, _, img in files])
    return build_profile(
        detector, name, "screw", images, [(n, b) for n, b, _ in files], rule="loo_max"
    )


def test_a_profile_round_trips_and_holds_what_it_was_built_from(detector, tmp_path):
    profile = _profile(detector, tmp_path)  # mixed sizes: every image resized
    assert len(profile.images) == 3 and all(len(i["sha256"]) == 64 for i in profile.images)
    assert profile.threshold == max(profile.loo_scores)
    assert profile.backbone["preset"] == "small" and profile.model == model_fingerprint(
        detector.model
    )
    save_profile(profile, tmp_path / "profiles")
    back = load_profile(tmp_path / "profiles", "line-1")
    torch.testing.assert_close(back.memory, profile.memory)
    assert back.summary() == profile.summary()
    back.check_usable(detector.model)  # the model it was built for


def test_a_profile_of_another_backbone_or_model_is_refused(detector, tmp_path):
    profile = _profile(detector, tmp_path)
    other = dataclasses.replace(profile, backbone={**profile.backbone, "stride": 8})
    with pytest.raises(ProfileError, match="backbone"):
        other.check_usable(detector.model)
    with pytest.raises(ProfileError, match="another model"):
        dataclasses.replace(profile, model="0" * 64).check_usable(detector.model)
    assert profile.views == 4  # the default model reads each reference with its flips
    with pytest.raises(ProfileError, match=r"1 view\(s\), this model reads 4 .*flips"):
        dataclasses.replace(profile, views=1).check_usable(detector.model)  # built before flips


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 65, "a..b", "über"])
def test_profile_names_with_path_characters_are_refused(name):
    with pytest.raises(ValueError, match="profile name"):
        check_name(name)
    with pytest.raises(ConfigError):
        parse_profile_params({"name": name, "category": "screw", "images": "x"})


def test_empty_folders_unknown_profiles_and_broken_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProfileError, match="no image found"):
        read_references(str(tmp_path / "empty"), 10**7)
    with pytest.raises(ProfileError, match="no profile 'nope'"):
        load_profile(tmp_path, "nope")
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "profile.json").write_text("{not json")
    (bad / "memory.safetensors").write_bytes(b"junk")
    with pytest.raises(ProfileError, match="unreadable"):
        load_profile(tmp_path, "broken")
    folder = _folder(tmp_path)
    (folder / "3.png").write_bytes(b"not a png")
    with pytest.raises(ProfileError, match="3.png"):
        read_references(str(folder), 10**7)


def test_too_many_references_are_refused_with_the_cap(tmp_path, monkeypatch):
    import vmad_pipeline.inference.profiles as profiles

    monkeypatch.setattr(profiles, "MAX_IMAGES", 2)
    with pytest.raises(ProfileError, match="at most 2"):
        read_references(str(_folder(tmp_path)), 10**7)


def test_a_model_without_the_cue_builds_no_profile(tmp_path):
    tok = tiny_tokenizer()
    model = build_vmad(SMALL_CFG, tok, train_classes=["screw"]).eval()
    cfg = parse_evaluate_params(
        {"progress": False, "follow_ups": False, "hierarchy": {"enabled": False}}
    )
    plain = Detector.for_model(model, tok, cfg, strict=False)
    with pytest.raises(ProfileError, match="reads no references"):
        build_profile(
            plain,
            "p",
            "screw",
            torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
            [("a", b""), ("b", b"")],
            rule="loo_max",
        )


def test_a_profile_names_and_keeps_out_an_anomalous_reference(detector, tmp_path, monkeypatch):
    import vmad_pipeline.inference.references as references

    monkeypatch.setattr(references, "outliers", lambda scores, floor: [1])
    profile = _profile(detector, tmp_path)
    assert profile.left_out == ["1.png"]
    save_profile(profile, tmp_path / "profiles")
    back = load_profile(tmp_path / "profiles", "line-1")
    assert back.left_out == ["1.png"] and back.reference_set().left_out == [1]
    assert (
        back.references().label == "profile:line-1 (#2 of 3 left out: anomalous against the others)"
    )
