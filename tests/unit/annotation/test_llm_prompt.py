"""LLM backend without a server: reply validation, the prompt, backoff arithmetic, parameters."""

from __future__ import annotations

import base64
import io
import json
import random
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from vmad_pipeline.annotation.geometry import mask_geometry
from vmad_pipeline.annotation.llm_cache import ReplyCache, request_key
from vmad_pipeline.annotation.llm_client import (
    LlmReplyError,
    backoff_delay,
    message_text,
    parse_retry_after,
)
from vmad_pipeline.annotation.llm_prompt import (
    image_data_url,
    mask_summary,
    parse_answers,
    sent_size,
    user_text,
)
from vmad_pipeline.configs import ConfigError
from vmad_pipeline.configs.annotate import AnnotateConfig, LlmConfig, parse_annotate_params

GOOD = {"description": "A scratch.", "impact": "Looks bad.", "suggestion": "Rework it."}

# --- reply validation --------------------------------------------------------------------------


def test_parse_bare_and_fenced_json() -> None:
    assert parse_answers(json.dumps(GOOD), max_chars=100) == GOOD
    fenced = "Sure! Here is the report:\n```json\n" + json.dumps(GOOD, indent=2) + "\n```\nBye."
    assert parse_answers(fenced, max_chars=100) == GOOD
    plain_fence = "```\n" + json.dumps(GOOD) + "\n```"
    assert parse_answers(plain_fence, max_chars=100) == GOOD
    padded = {**GOOD, "description": "  A scratch.  ", "extra": 1}
    assert parse_answers(json.dumps(padded), max_chars=100) == GOOD  # stripped, extra ignored


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("The part has a scratch.", "not JSON"),
        ('```json\n{"description": "x",\n```', "not JSON"),
        (json.dumps(["a", "b", "c"]), "list, not an object"),
        (json.dumps({"description": "x", "impact": "y"}), "lacks keys \\['suggestion'\\]"),
        (json.dumps({**GOOD, "impact": ""}), "'impact' is empty"),
        (json.dumps({**GOOD, "impact": "   "}), "'impact' is empty"),
        (json.dumps({**GOOD, "suggestion": 3}), "'suggestion' is a int"),
        (json.dumps({**GOOD, "description": "x" * 101}), "101 characters \\(limit 100\\)"),
    ],
)
def test_parse_rejects_with_reason(content: str, reason: str) -> None:
    with pytest.raises(LlmReplyError, match=reason):
        parse_answers(content, max_chars=100)


def test_message_text_shapes() -> None:
    reply = {"choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    assert message_text(reply) == "hi"
    parts = {
        "choices": [
            {"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}
        ]
    }
    assert message_text(parts) == "ab"
    with pytest.raises(LlmReplyError, match="no choices.*overloaded"):
        message_text({"error": {"message": "overloaded"}})
    with pytest.raises(LlmReplyError, match="finish_reason='length'"):
        message_text({"choices": [{"message": {"content": ""}, "finish_reason": "length"}]})


# --- prompt ------------------------------------------------------------------------------------


def test_sent_size() -> None:
    assert sent_size(640, 480, 0) == (640, 480)
    assert sent_size(640, 480, 1024) == (640, 480)
    assert sent_size(2048, 1024, 1024) == (1024, 512)
    assert sent_size(1000, 3000, 300) == (100, 300)


def test_mask_summary_hand_checked() -> None:
    mask = np.zeros((100, 200), dtype=np.uint8)
    mask[10:30, 20:60] = 1  # 800 px = 4 % of 20000, top left
    g = mask_geometry(mask)
    text = mask_summary(g, 200, 100, (200, 100))
    assert "200x100 pixels" in text and "one connected region" in text
    assert "4.00% of the image (medium)" in text and "top left" in text
    assert "x=20, y=10, width=40, height=20" in text
    half = mask_summary(g, 200, 100, (100, 50))  # the sent image is half size: box halves too
    assert "100x50 pixels" in half and "x=10, y=5, width=20, height=10" in half
    assert "empty" in mask_summary(mask_geometry(np.zeros((4, 4))), 4, 4, (4, 4))


def test_user_text_names_class_type_and_source_label() -> None:
    text = user_text(category="metal_nut", defect="missing_part", source_label="flip", summary="S.")
    assert "Object class: metal nut." in text
    assert "Defect type: missing part (the source dataset calls it 'flip')." in text
    assert "S." in text and '"description"' in text and '"suggestion"' in text
    same = user_text(category="bottle", defect="scratch", source_label="Scratch", summary="S.")
    assert "calls it" not in same


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 200, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_data_url_keeps_small_png_and_downscales_large() -> None:
    small = _png(40, 20)
    url = image_data_url(small, 64)
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == small  # sent byte for byte
    big = image_data_url(_png(200, 100), 64)
    with Image.open(io.BytesIO(base64.b64decode(big.split(",", 1)[1]))) as im:
        assert im.size == (64, 32)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buf, format="BMP")
    assert image_data_url(buf.getvalue(), 64).startswith("data:image/png;")  # BMP re-encoded


def _sent_pixels(url: str) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        return im.mode, np.asarray(im)


@pytest.mark.parametrize("max_side", [0, 32], ids=["as-is", "downscaled"])
def test_16_bit_grayscale_png_is_sent_scaled_not_saturated(max_side: int) -> None:
    """A 16-bit PNG (values up to 65535) reaches the model as 8 bits scaled by 255 / 65535:
    neither clipped to white by PIL's convert, nor passed on for the server to clip."""
    values = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    mode, sent = _sent_pixels(image_data_url(buf.getvalue(), max_side))
    assert mode in ("L", "RGB") and sent.dtype == np.uint8  # 8 bits, as every server expects
    grey = sent if sent.ndim == 2 else sent[..., 0]
    assert (grey == 255).mean() < 0.05  # a clipped 16-bit image is almost all white
    if max_side == 0:
        expected = np.rint(values * (255 / 65535))
        assert np.abs(grey.astype(float) - expected).max() <= 1
    else:
        assert grey.shape == (32, 32) and 120 <= grey.mean() <= 135  # the ramp's mean, 127.5


# --- backoff -----------------------------------------------------------------------------------


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:07 GMT", now=now) == 7.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0


def test_backoff_doubles_jitters_caps_and_honours_retry_after() -> None:
    rng = random.Random(0)
    for attempt, full in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 10.0)]:
        d = backoff_delay(attempt, base_s=1.0, max_s=10.0, rng=rng)
        assert full / 2 <= d <= full
    assert backoff_delay(0, base_s=0.01, max_s=10.0, retry_after=3.0, rng=rng) == 3.0
    assert backoff_delay(0, base_s=0.01, max_s=5.0, retry_after=99.0, rng=rng) == 5.0


# --- cache key ---------------------------------------------------------------------------------


def test_request_key_changes_with_each_input(tmp_path) -> None:
    base = {"image_sha256": "a" * 64, "prompt": "p", "model": "m", "params": {"temperature": 0.2}}
    key = request_key(**base)
    assert key == request_key(**base)
    for change in (
        {"image_sha256": "b" * 64},
        {"prompt": "q"},
        {"model": "n"},
        {"params": {"temperature": 0.3}},
    ):
        assert request_key(**{**base, **change}) != key
    cache = ReplyCache(tmp_path)
    assert cache.get(key) is None
    cache.put(key, {"answers": GOOD})
    assert cache.get(key)["answers"] == GOOD
    cache.path(key).write_text("{truncated")
    assert cache.get(key) is None  # unreadable entry: a miss, not a crash


# --- parameters --------------------------------------------------------------------------------


def test_parameters_defaults_and_errors() -> None:
    assert parse_annotate_params({"progress": False}) == AnnotateConfig(progress=False)
    with pytest.raises(ConfigError, match=r"annotate\.llm\.model: empty"):
        parse_annotate_params({"backend": "llm"})
    with pytest.raises(ConfigError, match=r"annotate\.backend: unknown backend 'gpt'"):
        parse_annotate_params({"backend": "gpt"})
    with pytest.raises(ConfigError, match=r"annotate\.llm\.temprature.*unknown parameter"):
        parse_annotate_params({"llm": {"temprature": 0.1}})
    with pytest.raises(ConfigError, match=r"annotate\.llm\.base_url"):
        parse_annotate_params({"llm": {"base_url": "localhost:8000"}})
    with pytest.raises(ConfigError, match=r"annotate\.llm\.api_key_env.*NAME"):
        parse_annotate_params({"llm": {"api_key_env": "sk-abc123"}})
    with pytest.raises(ConfigError, match=r"annotate\.llm\.concurrency: must be >= 1"):
        parse_annotate_params({"llm": {"concurrency": 0}})
    with pytest.raises(ConfigError, match=r"^max_backoff_s"):
        LlmConfig(backoff_s=2.0, max_backoff_s=1.0)
    with pytest.raises(ConfigError, match=r"annotate\.llm\.max_reply_bytes: must be >= 1024"):
        parse_annotate_params({"llm": {"max_reply_bytes": 10}})
