"""What the REST server accepts and refuses (``inference.serving``), without a server: every bad
request is a RequestError naming the row; nothing is decoded beyond the pixel limit; paths only
under an allowed root, symlinks resolved."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from helpers.serving import b64, bomb_png, png_bytes
from PIL import Image

from vmad_pipeline.inference.serving import (
    RequestError,
    ServeConfig,
    as_frame,
    decode_base64,
    png_base64,
    read_request,
)


def test_base64_with_line_breaks_or_a_data_uri_is_the_same_image():
    data = png_bytes()
    text = b64(data)
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # MIME, as base64 -w
    assert decode_base64(wrapped) == data
    assert decode_base64("data:image/png;base64," + wrapped) == data
    assert decode_base64(text.rstrip("=")) == data  # padding dropped by some clients
    for bad in ("not base64 at all!", "", 3.5):
        with pytest.raises(RequestError):
            decode_base64(bad)


def test_small_images_are_never_taken_for_paths():
    """Base64 under 1,024 characters was once tried as a file path: 15 small PNGs all read."""
    cfg = ServeConfig()
    rows = [{"image": b64(png_bytes(4 + i, 3 + i, 10 * i))} for i in range(15)]
    assert all(len(r["image"]) < 1024 for r in rows)
    images, names = read_request(pd.DataFrame(rows), cfg)
    assert [im.shape[:2] for im in images] == [(3 + i, 4 + i) for i in range(15)]
    assert names == ["object"] * 15


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "no rows"),
        ([{"category": "screw"}], "needs 'image'"),
        ([{"image": b64(b"hello, not an image")}], "row 0: image: not an image"),
        ([{"image": b64(png_bytes()), "path": "/etc/passwd"}], "exactly one"),
        ([{"image": b64(png_bytes())}, {"image": "%%%"}], "row 1: image: not valid base64"),
        ([{"path": "/etc/passwd"}], "file paths are refused"),
        ([{"image": b64(bomb_png())}], "over this server's limit"),
        ([{"image": b64(bomb_png(9000, 5000))}], "9000 x 5000 pixels is over"),
        # every text field by one rule (prompts.user_text): bounded, no special token (these
        # once reached the model: a 504 after 60 s and a 500)
        ([{"image": b64(png_bytes()), "category": "x" * 100_000}], r"row 0: category: 100000"),
        ([{"image": b64(png_bytes()), "category": "nut <image>"}], "row 0: category: may not"),
        ([{"image": b64(png_bytes()), "category": "[SEG]"}], "row 0: category: may not"),
        ([{"image": b64(png_bytes()), "category": "nut\x00"}], "control characters"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(rows, message):
    with pytest.raises(RequestError, match=message):
        read_request(pd.DataFrame(rows), ServeConfig())


def test_limits_come_from_model_config_or_the_environment(tmp_path):
    cfg = ServeConfig.from_settings(
        {}, {"VMAD_SERVE_MAX_PIXELS": "100", "VMAD_SERVE_MAX_ROWS": "2"}
    )
    assert (cfg.max_pixels, cfg.max_rows, cfg.allowed_root) == (100, 2, None)
    assert (
        ServeConfig.from_settings({"max_pixels": 7}, {"VMAD_SERVE_MAX_PIXELS": "100"}).max_pixels
        == 7
    )
    with pytest.raises(RequestError, match="over this server's limit of 100"):
        read_request(pd.DataFrame([{"image": b64(png_bytes(20, 10))}]), cfg)
    with pytest.raises(RequestError, match="at most 2"):
        read_request(pd.DataFrame([{"image": "x"}] * 3), cfg)
    with pytest.raises(ValueError, match="not a folder"):
        ServeConfig.from_settings({"allowed_root": str(tmp_path / "missing")}, {})


def test_paths_are_served_only_inside_the_allowed_root(tmp_path):
    root, outside = tmp_path / "served", tmp_path / "private"
    root.mkdir(), outside.mkdir()
    (root / "a.png").write_bytes(png_bytes(8, 6))
    (outside / "secret.png").write_bytes(png_bytes())
    (root / "link.png").symlink_to(outside / "secret.png")  # a symlink out of the root
    cfg = ServeConfig(allowed_root=str(root))
    images, _ = read_request(pd.DataFrame([{"path": "a.png"}, {"path": str(root / "a.png")}]), cfg)
    assert [im.shape for im in images] == [(6, 8, 3), (6, 8, 3)]
    for escape in ("../private/secret.png", str(outside / "secret.png"), "link.png"):
        with pytest.raises(RequestError, match="outside the allowed root"):
            read_request(pd.DataFrame([{"path": escape}]), cfg)
    with pytest.raises(RequestError, match="no such file"):
        read_request(pd.DataFrame([{"path": "nothing.png"}]), cfg)


def test_every_request_form_becomes_rows():
    image = b64(png_bytes())
    assert list(as_frame({"image": [image, image], "category": ["a", "b"]})["category"]) == [
        "a",
        "b",
    ]
    assert len(as_frame({"image": image})) == 1  # one row as scalars
    assert list(as_frame([{"image": image}, {"image": image, "category": "c"}]).columns) == [
        "image",
        "category",
    ]
    for bad in ("just a string", 3, {"image": [image], "category": ["a", "b"]}):
        with pytest.raises(RequestError):
            as_frame(bad)


def test_masks_travel_as_png_at_the_images_size():
    mask = np.zeros((30, 40), np.uint8)
    mask[3:9, 5:20] = 255
    with Image.open(io.BytesIO(base64.b64decode(png_base64(mask)))) as im:
        assert im.size == (40, 30) and np.array_equal(np.asarray(im), mask)


def test_a_failure_inside_the_model_is_a_500_that_tells_nothing_internal(caplog):
    from mlflow.exceptions import MlflowException

    from vmad_pipeline.io.pyfunc import VmadPyfunc

    class Broken:
        image_threshold = 0.5

        def inspect(self, images, names, **references):
            raise RuntimeError("CUDA error at /srv/secret/model.py:12")

    model = VmadPyfunc()
    model.limits, model.detector = ServeConfig(), Broken()
    with pytest.raises(MlflowException) as caught:
        model.predict(None, pd.DataFrame([{"image": b64(png_bytes())}]))
    assert caught.value.get_http_status_code() == 500
    assert "secret" not in caught.value.message and "RuntimeError" in caught.value.message
    assert "secret" in caplog.text  # the server's log has it
    with pytest.raises(MlflowException) as caught:
        model.predict(None, {"image": ["%%%"]})
    assert caught.value.get_http_status_code() == 400


def test_a_profile_column_needs_a_profile_folder_and_a_plain_name():
    from vmad_pipeline.inference.serving import request_references

    rows = pd.DataFrame([{"image": "x", "profile": "line-1"}, {"image": "x", "profile": None}])
    with pytest.raises(RequestError, match="reads no profiles"):
        request_references(rows, ServeConfig())
    assert request_references(rows, ServeConfig(profiles="/p")) == (
        [("profile", "line-1"), None],
        {},
    )
    bad = pd.DataFrame([{"image": "x", "profile": "../../etc/passwd"}])
    with pytest.raises(RequestError, match="row 0: profile name"):
        request_references(bad, ServeConfig(profiles="/p"))
    assert request_references(pd.DataFrame([{"image": "x"}]), ServeConfig()) == ([None], {})


def test_inline_references_are_read_once_per_set_and_bounded():
    import json

    from vmad_pipeline.inference.references import INLINE_REFERENCES
    from vmad_pipeline.inference.serving import request_references

    refs = json.dumps([b64(png_bytes(8, 6, 10)), b64(png_bytes(8, 6, 20))])
    other = json.dumps([b64(png_bytes(8, 6, 30))])
    rows = pd.DataFrame(
        [
            {"image": "x", "references": refs},
            {"image": "x"},
            {"image": "x", "references": refs},
            {"image": "x", "references": other},
        ]
    )
    sources, inline = request_references(rows, ServeConfig())
    assert sources[1] is None and sources[0] == sources[2] != sources[3]
    assert sources[0][0] == "inline" and len(inline) == 2
    assert [im.shape for im in inline[sources[0][1]]] == [(6, 8, 3)] * 2
    one = json.dumps([b64(png_bytes(8, 6, i)) for i in range(INLINE_REFERENCES // 2 + 1)])
    two = json.dumps([b64(png_bytes(8, 6, 100 + i)) for i in range(INLINE_REFERENCES // 2)])
    for bad, message in (
        ("[]", "row 0: references: expected a JSON array"),
        ("not json", "expected a JSON array"),
        ('["ok", 3]', "expected a JSON array"),
        (json.dumps([b64(png_bytes())] * (INLINE_REFERENCES + 1)), f"at most {INLINE_REFERENCES}"),
        (json.dumps([b64(png_bytes()), b64(bomb_png())]), r"references\[1\]: .*over this server"),
        (json.dumps([b64(b"not an image")]), r"references\[0\]: not an image"),
    ):
        with pytest.raises(RequestError, match=message):
            request_references(pd.DataFrame([{"image": "x", "references": bad}]), ServeConfig())
    with pytest.raises(RequestError, match="row 1: references: more than"):  # per request
        request_references(
            pd.DataFrame([{"image": "x", "references": one}, {"image": "x", "references": two}]),
            ServeConfig(),
        )
    both = pd.DataFrame([{"image": "x", "references": refs, "profile": "line-1"}])
    with pytest.raises(RequestError, match="row 0: give at most one"):
        request_references(both, ServeConfig(profiles="/p"))
