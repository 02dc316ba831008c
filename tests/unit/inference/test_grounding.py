"""The answer's "where" and "what" words follow the model's own evidence (inference.grounding):
the drawn mask's location, the type head's name (or "an anomaly" where it abstains); the tokens
change with the text, so a conversation's next turn reads what the user read."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.models import tiny_tokenizer

from vmad_pipeline.inference.grounding import (
    drawn_regions,
    ground_text,
    region_location,
    regrounded_ids,
)


@pytest.mark.parametrize(
    "text, location, defect, expected",
    [
        (
            "Yes. There is a crack at the center.",
            "top left",
            "scratch",
            "Yes. There is a scratch at the top left.",
        ),
        (
            "Yes. There is a crack at the center.",
            "right",
            None,
            "Yes. There is an anomaly at the right.",
        ),
        (
            "Yes. There is an anomaly at the top.",
            "bottom right",
            "missing_part",
            "Yes. There is a missing part at the bottom right.",
        ),
        (
            "Yes. There is a crack at the center.",
            "left",
            False,
            "Yes. There is a crack at the left.",
        ),
        ("No. It looks normal.", "left", "crack", "No. It looks normal."),
        ("It is at the center.", "bottom left", "crack", "It is at the bottom left."),
        ("It is a hole.", "top", "stain", "It is a stain."),
        ("It is a hole.", "top", None, "It is an anomaly."),
        # free text keeps its words, the location phrase follows the mask
        (
            "A crack runs at the top right of the part.",
            "left",
            "hole",
            "A crack runs at the left of the part.",
        ),
    ],
)
def test_the_slots_are_set_from_the_evidence(text, location, defect, expected):
    assert ground_text(text, location, defect) == expected


def test_a_drawn_region_is_the_mask_or_the_peak_of_a_faint_map():
    maps = np.zeros((3, 12, 12), np.float32)
    maps[0, 0:3, 9:12] = 0.9  # a mask at the top right
    maps[1, 10, 1] = 0.3  # faint: its peak, at the bottom left
    regions = drawn_regions(maps)
    assert [region_location(r) for r in regions] == ["top right", "bottom left", "center"]
    assert regions[0].sum() == 9 and regions[1].sum() == 1 and regions[2].all()


def test_the_tokens_change_with_the_text():
    tok = tiny_tokenizer()
    seg = tok.convert_tokens_to_ids("[SEG]")
    text = "Yes. There is a crack at the center."
    ids = [seg, *tok.encode(" " + text, add_special_tokens=False), tok.eos_token_id]
    assert regrounded_ids(tok, ids, text, text) == ids  # unchanged: the very tokens
    grounded = ground_text(text, "top left", None)
    out = regrounded_ids(tok, ids, text, grounded)
    assert out[0] == seg and out[-1] == tok.eos_token_id
    assert tok.decode(out, skip_special_tokens=True).strip() == grounded
