"""What the REST server (``mlflow models serve`` of the registered model) accepts and returns.

Requests: rows with ``image`` (base64 of an image file: line breaks and a ``data:...;base64,``
prefix allowed) or ``path`` (a file under the serving configuration's allowed root, refused
when none is named), and optionally ``category`` (the object's name; default "object") and
``profile`` (a product profile's name, read from the serving configuration's profile folder:
the image is compared with its normal references and decided at its threshold) or
``references`` (a JSON array of base64 normal images of the product, up to
``inference.references.INLINE_REFERENCES`` a request: the same, built per request). Every
refusal is a :class:`RequestError` with a message for the client; nothing is decoded before the
image's size in its header is checked against the pixel limit (decompression bombs).

Responses: per row the score, the decision, P(yes), the answer as text, whether [SEG] was
emitted, the location the answer names, and the mask and the anomaly map as PNG images (base64)
at the input image's size.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vmad_pipeline.configs.predict import DEFAULT_MAX_PIXELS
from vmad_pipeline.images import check_pixels, read_rgb
from vmad_pipeline.prompts import object_text

DEFAULT_MAX_ROWS = 64
_DATA_URI = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


# The request's and the response's columns and their MLflow types (the registered model's
# signature is built from these: io.pyfunc.signature).
INPUTS = {
    "image": "string",
    "path": "string",
    "category": "string",
    "profile": "string",
    "references": "string",  # a JSON array of base64 normal images of the product
}
OUTPUTS = {
    "score": "double",
    "anomalous": "boolean",
    "p_yes": "double",
    "answer": "string",
    "seg_found": "boolean",
    "location": "string",
    "width": "long",
    "height": "long",
    "mask_png": "string",
    "anomaly_map_png": "string",
    # Anomaly-OV's expert (docs/experts.md): its score (null) and map ("") without one
    "expert_score": "double",
    "significance_png": "string",
    # what the image was compared with: "profile:<name>", "inline:<n> images" or "" (none)
    "references": "string",
    "image_threshold": "double",  # the threshold it was decided at
    # zero-shot, no place of the image unlike the rest of it: its score was multiplied by the
    # model's self_comparison.repeated_score (docs/references.md, "The zero-shot decision")
    "repeats_itself": "boolean",
}


class RequestError(ValueError):
    """A request the server refuses: the client gets this message with a 4xx status."""


@dataclass(frozen=True)
class ServeConfig:
    """Limits of the server: ``allowed_root`` (None: ``path`` is refused), ``max_pixels`` per
    image, ``max_rows`` per request, ``profiles`` (the folder of product profiles; None: the
    ``profile`` column is refused)."""

    allowed_root: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_rows: int = DEFAULT_MAX_ROWS
    profiles: str | None = None

    @classmethod
    def from_settings(cls, given: Mapping | None = None, env: Mapping | None = None) -> ServeConfig:
        """From ``model_config`` keys (``allowed_root``, ``max_pixels``, ``max_rows``), else the
        environment (``VMAD_SERVE_ALLOWED_ROOT``, ``VMAD_SERVE_MAX_PIXELS``,
        ``VMAD_SERVE_MAX_ROWS``, ``VMAD_SERVE_PROFILES``: ``mlflow models serve`` passes no
        model_config)."""
        given, env = dict(given or {}), os.environ if env is None else env

        def pick(key: str, default):
            value = given.get(key)
            return env.get(f"VMAD_SERVE_{key.upper()}", default) if value is None else value

        root, profiles = pick("allowed_root", None), pick("profiles", None)
        out = cls(
            allowed_root=str(root) if root else None,
            max_pixels=int(pick("max_pixels", DEFAULT_MAX_PIXELS)),
            max_rows=int(pick("max_rows", DEFAULT_MAX_ROWS)),
            profiles=str(profiles) if profiles else None,
        )
        if out.max_pixels < 1 or out.max_rows < 1:
            raise ValueError(f"serving limits must be >= 1: {out}")
        if out.allowed_root and not Path(out.allowed_root).is_dir():
            raise ValueError(f"allowed_root {out.allowed_root!r} is not a folder")
        return out


def as_frame(model_input) -> pd.DataFrame:
    """A request's rows as a DataFrame: a DataFrame, a dict of columns (the ``{"inputs":
    {...}}`` form), a list of row dicts, or a dict of scalars (one row)."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, Mapping):
        columns = {k: np.atleast_1d(np.asarray(v, dtype=object)) for k, v in model_input.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise RequestError(
                f"columns of different lengths: { {k: len(v) for k, v in columns.items()} }"
            )
        return pd.DataFrame({k: list(v) for k, v in columns.items()})
    if isinstance(model_input, list) and all(isinstance(r, Mapping) for r in model_input):
        return pd.DataFrame(model_input)
    raise RequestError(
        "expected rows with a column 'image' (base64) or 'path', e.g. "
        '{"dataframe_records": [{"image": "<base64>", "category": "screw"}]}'
    )


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and value != ""


def decode_base64(value) -> bytes:
    """An image file's bytes from base64 text (a data-URI prefix and whitespace allowed)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str):
        raise RequestError(f"image: expected base64 text, got {type(value).__name__}")
    text = _DATA_URI.sub("", value.strip(), count=1)
    text = "".join(text.split())  # MIME line breaks
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError("image: not valid base64") from err
    if not data:
        raise RequestError("image: empty")
    return data


def resolve_path(value, allowed_root: str | None) -> Path:
    """A served file: refused without an allowed root, and outside it (symlinks resolved)."""
    if not allowed_root:
        raise RequestError(
            "path: file paths are refused by this server; send the image as base64 in 'image' "
            "(or start the server with VMAD_SERVE_ALLOWED_ROOT=<folder>)"
        )
    root = Path(allowed_root).resolve()
    target = Path(str(value))
    target = (target if target.is_absolute() else root / target).resolve()
    if not target.is_relative_to(root):
        raise RequestError("path: outside the allowed root")
    if not target.is_file():
        raise RequestError("path: no such file under the allowed root")
    return target


def check_size(source: bytes | Path, max_pixels: int) -> None:
    """The image's size from its header (nothing decoded yet) within ``max_pixels``
    (``images.check_pixels``, the rule predict uses too)."""
    try:
        check_pixels(source, max_pixels, limit="this server's limit")
    except ValueError as err:
        raise RequestError(str(err)) from None


def read_image(source: bytes | Path, cfg: ServeConfig) -> np.ndarray:
    """An image's pixels (H x W x 3 uint8), its size checked from its header first
    (:func:`check_size`); a RequestError for an image that cannot be decoded."""
    check_size(source, cfg.max_pixels)
    try:
        return read_rgb(source)
    except ValueError as err:  # decodable header, unreadable pixels
        raise RequestError("image: cannot be decoded") from err


def read_request(frame: pd.DataFrame, cfg: ServeConfig) -> tuple[list[np.ndarray], list[str]]:
    """The images (H x W x 3 uint8) and object names of a request, or a RequestError naming the
    first bad row."""
    if len(frame) == 0:
        raise RequestError("no rows: send at least one image")
    if len(frame) > cfg.max_rows:
        raise RequestError(f"{len(frame)} rows: this server takes at most {cfg.max_rows} a request")
    if "image" not in frame.columns and "path" not in frame.columns:
        raise RequestError("each row needs 'image' (base64 of an image file) or 'path'")
    images, names = [], []
    for i, row in enumerate(frame.to_dict("records")):
        image, path = row.get("image"), row.get("path")
        if _present(image) == _present(path):
            raise RequestError(f"row {i}: give exactly one of 'image' (base64) and 'path'")
        try:
            source = (
                decode_base64(image) if _present(image) else resolve_path(path, cfg.allowed_root)
            )
            images.append(read_image(source, cfg))
        except RequestError as err:
            raise RequestError(f"row {i}: {err}") from None
        category = row.get("category")
        try:
            names.append(object_text(category) if _present(category) else "object")
        except ValueError as err:
            raise RequestError(f"row {i}: {err}") from None
    return images, names


def _inline_references(value, cfg: ServeConfig) -> tuple[str, list[np.ndarray]]:
    """A row's ``references``: a JSON array of base64 images, each read as ``image`` is (its
    size from the header within the pixel limit first); (their digest, the images)."""
    import hashlib
    import json

    from vmad_pipeline.inference.references import INLINE_REFERENCES

    try:
        items = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        items = None
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise RequestError(
            "references: expected a JSON array of base64 images as text, e.g. "
            '\'["<base64>", "<base64>"]\''
        )
    if len(items) > INLINE_REFERENCES:
        raise RequestError(
            f"references: {len(items)} images, at most {INLINE_REFERENCES} a request "
            "(build a profile for more: docs/references.md)"
        )
    images = []
    for j, item in enumerate(items):
        try:
            images.append(read_image(decode_base64(item), cfg))
        except RequestError as err:
            raise RequestError(f"references[{j}]: {str(err).replace('image: ', '')}") from None
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16], images


def request_references(
    frame: pd.DataFrame, cfg: ServeConfig
) -> tuple[list[tuple[str, str] | None], dict[str, list[np.ndarray]]]:
    """Each row's references: ``("profile", name)``, ``("inline", digest)`` or None; and the
    inline references' images by digest. Refused (a RequestError naming the row): a
    ``profile`` when the server has no profile folder, a name that could not be a profile, a
    row with both columns, inline references past the pixel limit or more than
    ``inference.references.INLINE_REFERENCES`` distinct images in one request."""
    from vmad_pipeline.configs.profile import check_name
    from vmad_pipeline.inference.references import INLINE_REFERENCES

    out: list[tuple[str, str] | None] = []
    inline: dict[str, list[np.ndarray]] = {}
    texts: dict[str, str] = {}  # a row's references text -> its digest: each set read once
    empty = pd.Series([None] * len(frame))
    columns = zip(frame.get("profile", empty), frame.get("references", empty), strict=True)
    for i, (profile, refs) in enumerate(columns):
        try:
            if _present(profile) and _present(refs):
                raise RequestError("give at most one of 'profile' and 'references'")
            if _present(profile):
                if not cfg.profiles:
                    raise RequestError(
                        "profile: this server reads no profiles (start it with "
                        "VMAD_SERVE_PROFILES=<folder>)"
                    )
                try:
                    out.append(("profile", check_name(str(profile))))
                except ValueError as err:
                    raise RequestError(str(err)) from None
            elif _present(refs):
                key = refs if isinstance(refs, str) else repr(refs)
                if key not in texts:
                    digest, images = _inline_references(refs, cfg)
                    inline[digest] = images
                    texts[key] = digest
                    if sum(len(v) for v in inline.values()) > INLINE_REFERENCES:
                        raise RequestError(
                            f"references: more than {INLINE_REFERENCES} distinct reference "
                            "images in one request (send rows of one product together, or "
                            "build a profile)"
                        )
                out.append(("inline", texts[key]))
            else:
                out.append(None)
        except RequestError as err:
            raise RequestError(f"row {i}: {err}") from None
    return out, inline


def inspect_request(detector, images, names, sources: list, load_references):
    """Each image inspected, grouped by its references (``sources[i]``: a key of
    :func:`request_references` or None; ``load_references(key, category)``: its
    ``inference.references.References``): (inspections, the references' labels, the thresholds
    decided at), in the request's order."""
    from vmad_pipeline.inference.references import inspection_args

    found: list = [None] * len(images)
    labels, cuts = [""] * len(images), [detector.image_threshold] * len(images)
    groups: dict = {}
    for i, key in enumerate(sources):  # inline references are thresholded per object name
        group = key if key is None or key[0] == "profile" else (*key, names[i])
        groups.setdefault(group, []).append(i)
    for key, rows in groups.items():
        refs = None if key is None else load_references(key[:2], names[rows[0]])
        cats = [names[i] for i in rows]
        given = inspection_args(refs, [str(i) for i in rows], cats)
        seen = detector.inspect([images[i] for i in rows], cats, **given)
        cut = given.get("threshold")
        for i, one in zip(rows, seen, strict=True):
            found[i] = one
            labels[i] = "" if refs is None else refs.label
            cuts[i] = detector.image_threshold if cut is None else cut
    return found, labels, cuts


def png_base64(array: np.ndarray) -> str:
    """A uint8 image (H x W or H x W x 3) as base64 PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def response(inspections, references=None, thresholds=None) -> pd.DataFrame:
    """The rows a request gets back (``inference.service.Inspection`` each; the references each
    was compared with and the threshold it was decided at), columns :data:`OUTPUTS`."""
    n = len(inspections)
    out = pd.DataFrame(
        {
            "score": [float(x.score) for x in inspections],
            "anomalous": [bool(x.anomalous) for x in inspections],
            "p_yes": [float(x.p_yes) for x in inspections],
            "answer": [x.answer for x in inspections],
            "seg_found": [bool(x.seg_found) for x in inspections],
            "location": [x.location or "" for x in inspections],
            "width": [int(x.mask.shape[1]) for x in inspections],
            "height": [int(x.mask.shape[0]) for x in inspections],
            "mask_png": [png_base64(x.mask) for x in inspections],
            "anomaly_map_png": [png_base64(x.map) for x in inspections],
            "expert_score": pd.Series([x.expert_score for x in inspections], dtype=object),
            "significance_png": [
                "" if x.significance is None else png_base64(x.significance) for x in inspections
            ],
            "references": list(references or [""] * n),
            "image_threshold": [float(t) for t in (thresholds or [float("nan")] * n)],
            "repeats_itself": [bool(x.repeats_itself) for x in inspections],
        }
    )
    return out[list(OUTPUTS)]
