"""The one rule for text a user puts into a prompt (prompts.user_text)."""

from __future__ import annotations

import pytest

from vmad_pipeline import prompts


def test_user_text_is_collapsed_bounded_and_free_of_special_tokens():
    assert prompts.object_text("  hex\n  nut ") == "hex nut"
    assert prompts.object_text("x" * prompts.MAX_OBJECT_CHARS) == "x" * prompts.MAX_OBJECT_CHARS
    bad = {
        "": "category: empty",
        "   \t": "category: empty",
        "x" * (prompts.MAX_OBJECT_CHARS + 1): "65 characters, more than the 64 allowed",
        "a <image> b": r"may not contain <image> or \[SEG\]",
        "a[SEG]": "may not contain",
        "bell\x07": "control characters",
        "zero\u200bwidth": "control characters",  # a format character hides in names
    }
    for text, message in bad.items():
        with pytest.raises(ValueError, match=message):
            prompts.object_text(text)
    long = "why " * 200
    with pytest.raises(ValueError, match=f"question: {len(long.strip())} characters"):
        prompts.question_text(long)
    assert prompts.question_text("Where is it?") == "Where is it?"
