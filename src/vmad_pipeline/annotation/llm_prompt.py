"""What the LLM backend sends and what it accepts back.

The request: a system prompt, then one user message with a text part (object class, defect
type, the mask summary in words and pixels) and the image as a base64 data URL
(``image_url`` content part). The reply must be one JSON object (bare, or inside a fenced
code block) with the non-empty string answers :data:`ANSWER_KEYS`.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Mapping
from typing import Any

from PIL import Image

from vmad_pipeline.annotation.llm_client import LlmReplyError
from vmad_pipeline.annotation.taxonomy import normalise_name
from vmad_pipeline.images import as_rgb8

__all__ = [
    "ANSWER_KEYS",
    "SYSTEM_PROMPT",
    "sent_size",
    "mask_summary",
    "user_text",
    "image_data_url",
    "chat_messages",
    "parse_answers",
]

ANSWER_KEYS = ("description", "impact", "suggestion")

SYSTEM_PROMPT = (
    "You are an experienced industrial quality inspector. You look at a photo of a manufactured "
    "object that is known to be defective, together with the defect type and the location of the "
    "defect (from a pixel mask), and you write three short answers for an inspection report. "
    "Reply with one JSON object and nothing else."
)

_INSTRUCTIONS = (
    "Write three answers:\n"
    '- "description": describe the defect as seen in the image: what it is, where it is on the '
    "object and how large it is (1-3 sentences).\n"
    '- "impact": analyse the impact of this defect on the function, reliability, safety or '
    "appearance of the object (1-3 sentences).\n"
    '- "suggestion": suggest what to do with the part and how to prevent the defect in '
    "production (1-3 sentences).\n"
    'Reply with exactly this JSON object: {"description": "...", "impact": "...", '
    '"suggestion": "..."}'
)

# Formats every OpenAI-compatible vision endpoint accepts; others are re-encoded as PNG.
_SENDABLE = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
# Pixel modes sent byte for byte; any other (16-bit, 32-bit, float, CMYK, ...) is re-encoded as
# 8-bit RGB through images.as_rgb8, since servers convert with PIL's convert("RGB"), which clips
# 16-bit values to white.
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def sent_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size of the image as sent: downscaled (aspect kept) so the longer side is ``max_side``;
    unchanged when already within it or when ``max_side`` is 0."""
    longest = max(width, height)
    if max_side <= 0 or longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def mask_summary(
    geometry: Mapping[str, Any], width: int, height: int, sent: tuple[int, int]
) -> str:
    """The mask in words and pixels of the image as sent (``sent`` = its width, height)."""
    n = int(geometry.get("n_regions") or 0)
    sw, sh = sent
    if n == 0:
        return f"The image is {sw}x{sh} pixels. The defect mask is empty: its region is not marked."
    sx, sy = sw / width, sh / height
    x, y, w, h = geometry["bbox"]
    bx, by = round(x * sx), round(y * sy)
    bw, bh = max(1, round(w * sx)), max(1, round(h * sy))
    regions = "one connected region" if n == 1 else f"{n} separate regions"
    return (
        f"The image is {sw}x{sh} pixels. The defect mask covers {regions}, "
        f"{100 * float(geometry['area_fraction']):.2f}% of the image ({geometry['size']}), "
        f"centred in the {geometry['location']} of the image; its bounding box is x={bx}, y={by}, "
        f"width={bw}, height={bh} pixels (origin at the top left)."
    )


def user_text(*, category: str, defect: str, source_label: str, summary: str) -> str:
    """The text part of the user message. ``defect`` is the taxonomy type (or "unknown");
    ``source_label`` the source dataset's own name for it, added when it says more."""
    obj = normalise_name(category) or "object"
    defect_words = normalise_name(defect) or "unknown"
    label = normalise_name(source_label)
    if label and label != defect_words:
        defect_words += f" (the source dataset calls it '{source_label}')"
    return f"Object class: {obj}.\nDefect type: {defect_words}.\n{summary}\n\n{_INSTRUCTIONS}"


def image_data_url(data: bytes, max_side: int) -> str:
    """An image file's bytes as a ``data:<mime>;base64,...`` URL: the bytes themselves when the
    format is sendable, the pixels 8-bit and the size within ``max_side``; else downscaled and
    re-encoded as PNG, converted by :func:`vmad_pipeline.images.as_rgb8` (16-bit images scaled
    to 8 bits, not clipped) unless already RGB or L."""
    with Image.open(io.BytesIO(data)) as im:
        fmt = (im.format or "").upper()
        size = sent_size(im.width, im.height, max_side)
        if fmt not in _SENDABLE or im.mode not in _EIGHT_BIT_MODES or size != im.size:
            im = as_rgb8(im) if im.mode not in ("RGB", "L") else im
            if size != (im.width, im.height):
                im = im.resize(size, Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            data, fmt = buf.getvalue(), "PNG"
    return f"data:{_SENDABLE[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def chat_messages(text: str, data_url: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": data_url}},
            ],
        },
    ]


def _json_object(content: str) -> Any:
    text = content.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise LlmReplyError(
            f"reply is not JSON ({err.msg} at char {err.pos}): {content[:120]!r}"
        ) from None


def parse_answers(content: str, *, max_chars: int) -> dict[str, str]:
    """The three answers from a reply's text; LlmReplyError naming the first broken rule.

    Rules: one JSON object (bare or in a ```json fence); every key of :data:`ANSWER_KEYS`
    present with a non-empty string of at most ``max_chars`` characters (whitespace stripped).
    Other keys are ignored.
    """
    obj = _json_object(content)
    if not isinstance(obj, dict):
        raise LlmReplyError(f"reply JSON is a {type(obj).__name__}, not an object")
    missing = [k for k in ANSWER_KEYS if k not in obj]
    if missing:
        raise LlmReplyError(f"reply JSON lacks keys {missing} (has {sorted(obj)[:10]})")
    answers: dict[str, str] = {}
    for key in ANSWER_KEYS:
        value = obj[key]
        if not isinstance(value, str):
            raise LlmReplyError(f"reply key {key!r} is a {type(value).__name__}, not a string")
        value = value.strip()
        if not value:
            raise LlmReplyError(f"reply key {key!r} is empty")
        if len(value) > max_chars:
            raise LlmReplyError(
                f"reply key {key!r} has {len(value)} characters (limit {max_chars})"
            )
        answers[key] = value
    return answers
