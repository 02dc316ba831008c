"""The registered model behind a real ``mlflow models serve`` on 127.0.0.1, asked over HTTP as a
new user and a hostile client would: every request form, clean answers, masks as PNG at the
input's size, and refusals as 4xx with a message and no stack trace."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers import REPO
from helpers.models import SMALL_CFG, tiny_tokenizer
from helpers.serving import b64, bomb_png, free_port, png_bytes
from PIL import Image

from vmad_pipeline.configs import WeightsConfig
from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.configs.model import ReferenceCueConfig
from vmad_pipeline.images import read_rgb
from vmad_pipeline.inference.profiles import build_profile, save_profile
from vmad_pipeline.inference.service import Detector
from vmad_pipeline.io.tracking import PyfuncModelDataset
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.checkpoint import Checkpoint, save_checkpoint

pytestmark = pytest.mark.slow


CUE_CFG = dataclasses.replace(SMALL_CFG, references=ReferenceCueConfig(enabled=True))


def register_tiny_model(tmp, store: str) -> None:
    """A small untrained model that reads references, saved and registered as the train
    pipeline does, and a profile of two normal images for it (tmp/profiles/line-1)."""
    import mlflow
    import torch

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = build_vmad(CUE_CFG, tok, train_classes=["screw"])
    model.decision = {"image_threshold": 0.5, "pixel_threshold": 0.5, "calibrated": False}
    save_checkpoint(model, tok, tmp / "ckpt")
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    experiment = mlflow.create_experiment("serve", artifact_location=(tmp / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        PyfuncModelDataset(
            name="vmad",
            registered_model_name="vmad",
            checkpoint=str(tmp / "ckpt"),
            pip_requirements=["torch"],
        ).save({"model_config": EvaluateConfig(max_new_tokens=4).model_config()})
    detector = Detector.from_checkpoint(
        Checkpoint(tmp / "ckpt"), WeightsConfig(), EvaluateConfig(max_new_tokens=4)
    )
    refs = [png_bytes(40, 30, 90), png_bytes(40, 30, 95)]
    images = torch.stack([detector.tensor(read_rgb(b)) for b in refs])
    profile = build_profile(
        detector,
        "line-1",
        "screw",
        images,
        [("a.png", refs[0]), ("b.png", refs[1])],
        rule="loo_max",
    )
    save_profile(profile, tmp / "profiles")


def readme_example() -> list[str]:
    """The README's serving example: the server command, then the client's lines."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- serve-example -->", 1)[1].split("<!-- /serve-example -->", 1)[0]
    lines = block.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    return [line.strip() for line in lines]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The README's server command as written (its port free here), in a project folder that
    holds a registered tiny model in ``mlruns/mlflow.db`` and the README's image."""
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "mlruns").mkdir()
    register_tiny_model(tmp, f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    image = tmp / "data/01_raw/synthetic/pcb/test/good/000.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(png_bytes(40, 30))
    port = free_port()
    command = readme_example()[0].removesuffix("&").replace("5001", str(port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["VMAD_SERVE_PROFILES"] = str(tmp / "profiles")
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        ["bash", "-c", command],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        start_new_session=True,  # its own process group: the server goes with the shell
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield tmp, port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def server(served):
    return f"http://127.0.0.1:{served[1]}"


def test_the_readme_curl_example_works_as_written(served):
    folder, port = served
    client = "\n".join(readme_example()[1:]).replace("5001", str(port))
    out = subprocess.run(
        ["bash", "-c", client], cwd=folder, capture_output=True, text=True, check=True
    )
    (row,) = json.loads(out.stdout)["predictions"]
    assert (row["width"], row["height"]) == (40, 30) and "answer" in row


def post(url: str, body, content_type: str = "application/json") -> tuple[int, dict | str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def png_of(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as im:
        return np.asarray(im)


def test_an_image_in_every_form_gets_clean_answers_and_masks_at_its_size(server):
    text = b64(png_bytes(40, 30))
    wrapped = "data:image/png;base64," + "\n".join(
        text[i : i + 76] for i in range(0, len(text), 76)
    )
    forms = [
        {"dataframe_records": [{"image": text, "category": "screw"}]},
        {"dataframe_split": {"columns": ["image"], "data": [[wrapped]]}},
        {"inputs": {"image": [text], "category": ["screw"]}},
        {"instances": [{"image": text}]},
    ]
    for body in forms:
        status, out = post(server, body)
        assert status == 200, (body.keys(), out)
        (row,) = out["predictions"]
        assert "[SEG]" not in row["answer"] and "</s>" not in row["answer"]
        assert row["anomalous"] == (row["score"] >= 0.5)
        assert (row["width"], row["height"]) == (40, 30)
        mask, amap = png_of(row["mask_png"]), png_of(row["anomaly_map_png"])
        assert mask.shape == amap.shape == (30, 40) and set(np.unique(mask)) <= {0, 255}
        assert len(json.dumps(row)) < 10_000  # compact: no 128 x 128 floats
    # 15 small PNGs in one request (each base64 under 1,024 characters)
    rows = [{"image": b64(png_bytes(4 + i, 3 + i, 10 * i))} for i in range(15)]
    status, out = post(server, {"dataframe_records": rows})
    assert status == 200 and len(out["predictions"]) == 15
    sizes = [(r["width"], r["height"]) for r in out["predictions"]]
    assert sizes == [(4 + i, 3 + i) for i in range(15)]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"dataframe_records": [{"image": b64(b"not an image")}]}, "not an image"),
        ({"dataframe_records": [{"image": "%%% not base64"}]}, "not valid base64"),
        ({"dataframe_records": [{"path": "/etc/passwd"}]}, "file paths are refused"),
        ({"dataframe_records": [{"image": b64(bomb_png())}]}, "over this server's limit"),
        ({"dataframe_records": [{"category": "screw"}]}, "image"),
        ({"dataframe_records": []}, "no rows"),
        (b"{not json", ""),
    ],
)
def test_bad_requests_get_a_4xx_with_a_reason_and_no_stack_trace(server, body, message):
    status, out = post(server, body)
    assert 400 <= status < 500, out
    text = json.dumps(out)
    assert message in text and "Traceback" not in text and "stack_trace" not in text


def test_a_profile_is_read_by_name_and_decides_at_its_threshold(served, server):
    folder, _ = served
    stored = json.loads((folder / "profiles" / "line-1" / "profile.json").read_text())
    rows = [
        {"image": b64(png_bytes(40, 30, 90)), "category": "screw", "profile": "line-1"},
        {"image": b64(png_bytes(40, 30, 90)), "category": "screw"},
    ]
    status, out = post(server, {"dataframe_records": rows})
    assert status == 200, out
    with_profile, without = out["predictions"]
    assert with_profile["references"] == "profile:line-1" and without["references"] == ""
    assert with_profile["image_threshold"] == pytest.approx(stored["threshold"])
    assert with_profile["anomalous"] == (with_profile["score"] >= with_profile["image_threshold"])
    for bad, message in (("nope", "unknown to this server"), ("../etc", "profile name")):
        status, out = post(server, {"dataframe_records": [{**rows[0], "profile": bad}]})
        assert 400 <= status < 500 and message in json.dumps(out), out
        assert str(folder) not in json.dumps(out)  # the server's folders stay private


def test_inline_references_decide_as_the_profile_of_the_same_images(served, server):
    """The same two normal images sent inline (a JSON array of base64) give what their profile
    gives: one code path; a bad set is a 400 naming the reference."""
    image = b64(png_bytes(40, 30, 90))
    refs = json.dumps([b64(png_bytes(40, 30, 90)), b64(png_bytes(40, 30, 95))])
    rows = [
        {"image": image, "category": "screw", "profile": "line-1"},
        {"image": image, "category": "screw", "references": refs},
    ]
    status, out = post(server, {"dataframe_records": rows})
    assert status == 200, out
    profiled, inline = out["predictions"]
    assert inline["references"] == "inline:2 images"
    assert inline["image_threshold"] == pytest.approx(profiled["image_threshold"], abs=1e-6)
    assert inline["score"] == pytest.approx(profiled["score"], abs=1e-6)
    bad = json.dumps([b64(png_bytes(40, 30, 90)), b64(b"not an image")])
    status, out = post(server, {"dataframe_records": [{**rows[1], "references": bad}]})
    assert 400 <= status < 500 and "references[1]" in json.dumps(out), out
