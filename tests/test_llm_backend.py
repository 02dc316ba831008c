"""The LLM annotation backend against a small OpenAI-compatible server on loopback.

The server (``http.server`` in a thread, port 0) answers each POST with whatever the test's
``script(n, body)`` returns, and records every request body, header, arrival time and the
largest number of requests it had in flight at once.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image
from test_annotation import write_widget_tree

from vmad_pipeline.annotation import QaItem, Taxonomy, mask_geometry, rle_to_mask
from vmad_pipeline.annotation.config import LlmConfig
from vmad_pipeline.annotation.llm import LlmAnnotationError, annotate_with_llm
from vmad_pipeline.annotation.llm_client import LlmHttpError
from vmad_pipeline.pipelines.annotate import create_pipeline

REPO = Path(__file__).resolve().parents[1]
TAXONOMY = yaml.safe_load((REPO / "conf" / "base" / "taxonomy.yml").read_text())


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON; str -> sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def chat(content: str) -> Reply:
    return Reply(body={"choices": [{"message": {"role": "assistant", "content": content}}]})


def user_text_of(body: dict) -> str:
    return body["messages"][1]["content"][0]["text"]


def echo(n: int, body: dict) -> Reply:
    """A well-behaved model: answers that quote the request's class and defect lines."""
    lines = user_text_of(body).splitlines()
    return chat(
        json.dumps(
            {
                "description": f"LLM: {lines[1]} {lines[0]}",
                "impact": "It weakens the part.",
                "suggestion": "Scrap it.",
            }
        )
    )


class FakeLlm:
    def __init__(self, script: Callable[[int, dict], Reply] = echo) -> None:
        self.script = script
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    n = len(fake.bodies)
                    fake.bodies.append(body)
                    fake.headers.append(dict(self.headers))
                    fake.times.append(time.monotonic())
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    reply = fake.script(n, body)
                    time.sleep(reply.delay)
                    data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data.encode())))
                    self.end_headers()
                    self.wfile.write(data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.block_on_close = False  # do not wait for a handler still sleeping
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def count(self) -> int:
        return len(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    fake = FakeLlm()
    yield fake
    fake.close()


def config(server: FakeLlm, tmp_path: Path, **overrides: Any) -> LlmConfig:
    fast = {
        "base_url": server.url,
        "model": "test-vlm",
        "timeout_s": 5.0,
        "concurrency": 2,
        "max_retries": 2,
        "invalid_reply_retries": 1,
        "backoff_s": 0.001,
        "max_backoff_s": 0.01,
        "cache_dir": str(tmp_path / "llm_cache"),
    }
    return LlmConfig(**{**fast, **overrides})


def make_items(root: Path, categories: list[str]) -> list[QaItem]:
    """One 24x24 image (distinct content) with a mask per category, as the annotate step sees it."""
    taxonomy = Taxonomy.from_dict(TAXONOMY)
    items = []
    for i, category in enumerate(categories):
        image = root / category / f"{i:03d}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 24, 3), 10 * i, dtype=np.uint8)).save(image)
        mask = np.zeros((24, 24), dtype=np.uint8)
        mask[2:6, 3:9] = 1
        items.append(
            QaItem(
                image_id=i,
                source="src",
                image_path=f"{category}/{i:03d}.png",
                image=image,
                category=category,
                defect=taxonomy.lookup("scratch"),
                defect_type="scratch",
                geometry=mask_geometry(mask),
                width=24,
                height=24,
                sha256="",
            )
        )
    return items


def cache_files(cfg: LlmConfig) -> list[Path]:
    return sorted((Path(cfg.cache_dir) / "replies").rglob("*"))


# --- a good reply ------------------------------------------------------------------------------


def test_good_reply_and_what_is_sent(server: FakeLlm, tmp_path: Path) -> None:
    items = make_items(tmp_path, ["bottle", "metal_nut"])
    run = annotate_with_llm(items, config(server, tmp_path, temperature=0.0), progress=False)
    assert (run.sent, run.cached, run.failed, run.retries) == (2, 0, [], 0)
    assert run.answers[0]["description"] == "LLM: Defect type: scratch. Object class: bottle."
    assert run.answers[1]["description"].endswith("Object class: metal nut.")
    body = next(b for b in server.bodies if "bottle" in user_text_of(b))
    assert body["model"] == "test-vlm" and body["temperature"] == 0.0 and body["max_tokens"] == 800
    assert "response_format" not in body
    text_part, image_part = body["messages"][1]["content"]
    assert "x=3, y=2, width=6, height=4 pixels" in text_part["text"]
    assert "top left" in text_part["text"] and "24x24 pixels" in text_part["text"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == items[0].image.read_bytes()
    assert body["messages"][0]["role"] == "system"


def test_fenced_json_reply_and_json_mode(tmp_path: Path) -> None:
    answers = {"description": "d", "impact": "i", "suggestion": "s"}
    fake = FakeLlm(lambda n, b: chat("Here it is:\n```json\n" + json.dumps(answers) + "\n```"))
    try:
        cfg = config(fake, tmp_path, json_mode=True)
        run = annotate_with_llm(make_items(tmp_path, ["bottle"]), cfg, progress=False)
    finally:
        fake.close()
    assert run.answers == [answers]
    assert fake.bodies[0]["response_format"] == {"type": "json_object"}


# --- malformed replies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("The bottle has a scratch at the top left.", "not JSON"),
        (json.dumps({"description": "d", "impact": "i"}), "lacks keys \\['suggestion'\\]"),
    ],
)
def test_malformed_reply_is_retried_then_reported(
    tmp_path: Path, content: str, reason: str
) -> None:
    fake = FakeLlm(lambda n, b: chat(content))
    try:
        cfg = config(fake, tmp_path, invalid_reply_retries=2)
        with pytest.raises(
            LlmAnnotationError,
            match=rf"1 of 1 images.*\n  src/bottle/000.png: malformed reply: .*{reason}",
        ) as err:
            annotate_with_llm(make_items(tmp_path, ["bottle"]), cfg, progress=False)
    finally:
        fake.close()
    assert fake.count == 3  # the first reply and two more tries
    assert err.value.failures[0][0] == "src/bottle/000.png"
    assert cache_files(cfg) == []  # nothing cached for a failure
    report = json.loads((Path(cfg.cache_dir) / "failures.json").read_text())
    assert report[0]["file"] == "src/bottle/000.png" and "malformed reply" in report[0]["reason"]


def test_200_without_choices_is_malformed(tmp_path: Path) -> None:
    fake = FakeLlm(lambda n, b: Reply(body={"error": {"message": "model overloaded"}}))
    try:
        cfg = config(fake, tmp_path, invalid_reply_retries=0)
        with pytest.raises(LlmAnnotationError, match="no choices.*model overloaded"):
            annotate_with_llm(make_items(tmp_path, ["bottle"]), cfg, progress=False)
    finally:
        fake.close()
    assert fake.count == 1


# --- transient failures ------------------------------------------------------------------------


def test_slow_reply_times_out_then_retry_succeeds(tmp_path: Path) -> None:
    fake = FakeLlm(lambda n, b: Reply(delay=1.0) if n == 0 else echo(n, b))
    try:
        cfg = config(fake, tmp_path, timeout_s=0.2)
        t0 = time.monotonic()
        run = annotate_with_llm(make_items(tmp_path, ["bottle"]), cfg, progress=False)
        elapsed = time.monotonic() - t0
    finally:
        fake.close()
    assert fake.count == 2 and run.retries == 1 and run.sent == 1
    assert 0.2 <= elapsed < 1.0  # gave up on the slow one at the client timeout


def test_timeouts_exhaust_retries_and_are_reported(tmp_path: Path) -> None:
    fake = FakeLlm(lambda n, b: Reply(delay=0.6))
    try:
        cfg = config(fake, tmp_path, timeout_s=0.1, max_retries=1)
        with pytest.raises(
            LlmAnnotationError,
            match=r"src/bottle/000.png: timeout after 0.1 s.*gave up after 2 attempts",
        ):
            annotate_with_llm(make_items(tmp_path, ["bottle"]), cfg, progress=False)
    finally:
        fake.close()
    assert fake.count == 2


def test_429_with_retry_after_is_honoured(tmp_path: Path) -> None:
    limited = Reply(status=429, body={"error": "rate limited"}, headers={"Retry-After": "0.3"})
    fake = FakeLlm(lambda n, b: limited if n == 0 else echo(n, b))
    try:
        cfg = config(fake, tmp_path, max_backoff_s=2.0)  # backoff_s alone would wait ~1 ms
        run = annotate_with_llm(make_items(tmp_path, ["bottle"]), cfg, progress=False)
    finally:
        fake.close()
    assert fake.count == 2 and run.sent == 1 and run.retries == 1
    assert fake.times[1] - fake.times[0] >= 0.3


def test_500_then_success_and_500_forever(tmp_path: Path) -> None:
    fake = FakeLlm(lambda n, b: Reply(status=500, body="oops") if n == 0 else echo(n, b))
    try:
        run = annotate_with_llm(
            make_items(tmp_path, ["bottle"]), config(fake, tmp_path), progress=False
        )
    finally:
        fake.close()
    assert fake.count == 2 and run.sent == 1
    broken = FakeLlm(lambda n, b: Reply(status=503, body="down for maintenance"))
    try:
        cfg = config(broken, tmp_path / "other", max_retries=2)
        with pytest.raises(
            LlmAnnotationError,
            match="HTTP 503: 'down for maintenance' \\(gave up after 3 attempts\\)",
        ):
            annotate_with_llm(make_items(tmp_path, ["bottle"]), cfg, progress=False)
    finally:
        broken.close()
    assert broken.count == 3


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = LlmConfig(
        base_url=f"http://127.0.0.1:{port}/v1",
        model="m",
        max_retries=1,
        backoff_s=0.001,
        max_backoff_s=0.01,
        cache_dir=str(tmp_path / "c"),
    )
    with pytest.raises(LlmAnnotationError, match="connection error.*gave up after 2 attempts"):
        annotate_with_llm(make_items(tmp_path, ["bottle"]), cfg, progress=False)


# --- client errors -----------------------------------------------------------------------------


def test_401_is_not_retried_and_stops_the_run(tmp_path: Path) -> None:
    fake = FakeLlm(lambda n, b: Reply(status=401, body={"error": {"message": "invalid api key"}}))
    try:
        with pytest.raises(
            LlmHttpError, match="HTTP 401 from .*/v1/chat/completions.*invalid api key"
        ) as err:
            annotate_with_llm(
                make_items(tmp_path, ["bottle"]), config(fake, tmp_path), progress=False
            )
        assert err.value.status == 401 and fake.count == 1  # no retry
        cfg = config(fake, tmp_path, concurrency=1)
        with pytest.raises(LlmHttpError):
            annotate_with_llm(
                make_items(tmp_path, [f"c{i}" for i in range(6)]), cfg, progress=False
            )
        assert fake.count <= 1 + 2  # the queue is dropped: at most the running request follows
    finally:
        fake.close()


def test_400_fails_that_image_only_without_retry(tmp_path: Path) -> None:
    def script(n: int, body: dict) -> Reply:
        if "Object class: huge" in user_text_of(body):
            return Reply(status=400, body={"error": "image too large"})
        return echo(n, body)

    fake = FakeLlm(script)
    try:
        cfg = config(fake, tmp_path)
        with pytest.raises(
            LlmAnnotationError,
            match=r"1 of 3 images.*\n  src/huge/001.png: HTTP 400 .*image too large",
        ) as err:
            annotate_with_llm(
                make_items(tmp_path, ["bottle", "huge", "screw"]), cfg, progress=False
            )
    finally:
        fake.close()
    assert fake.count == 3 and len(err.value.failures) == 1


# --- API key -----------------------------------------------------------------------------------


def test_api_key_from_named_env_var_never_stored(
    server: FakeLlm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-very-secret")
    cfg = config(server, tmp_path, api_key_env="TEST_LLM_KEY")
    with caplog.at_level("DEBUG"):
        annotate_with_llm(make_items(tmp_path, ["bottle"]), cfg, progress=False)
    assert server.headers[0]["Authorization"] == "Bearer sk-very-secret"
    assert "sk-very-secret" not in caplog.text and "TEST_LLM_KEY" in caplog.text
    for path in cache_files(cfg):
        if path.is_file():
            assert "sk-very-secret" not in path.read_text()
    monkeypatch.delenv("TEST_LLM_KEY")
    annotate_with_llm(make_items(tmp_path, ["screw"]), cfg, progress=False)
    assert "Authorization" not in server.headers[1]


# --- cache -------------------------------------------------------------------------------------


def test_rerun_is_served_from_cache(server: FakeLlm, tmp_path: Path) -> None:
    items = make_items(tmp_path, ["bottle", "screw", "metal_nut"])
    cfg = config(server, tmp_path)
    first = annotate_with_llm(items, cfg, progress=False)
    assert server.count == 3 and first.sent == 3
    files = [p for p in cache_files(cfg) if p.is_file()]
    assert len(files) == 3 and not any(p.name.endswith(".tmp") for p in files)
    second = annotate_with_llm(items, cfg, progress=False)
    assert server.count == 3  # nothing sent
    assert (second.sent, second.cached) == (0, 3) and second.answers == first.answers
    annotate_with_llm(items, config(server, tmp_path, model="other-vlm"), progress=False)
    assert server.count == 6  # the model is part of the key
    annotate_with_llm(items, config(server, tmp_path, temperature=0.7), progress=False)
    assert server.count == 9  # so are the generation parameters
    Image.fromarray(np.full((24, 24, 3), 99, dtype=np.uint8)).save(items[0].image)
    annotate_with_llm(items, cfg, progress=False)
    assert server.count == 10  # and the image content


def test_failed_images_resume_from_cache(tmp_path: Path) -> None:
    state = {"broken": True}

    def script(n: int, body: dict) -> Reply:
        if state["broken"] and "Object class: screw" in user_text_of(body):
            return chat("not json at all")
        return echo(n, body)

    fake = FakeLlm(script)
    try:
        items = make_items(tmp_path, ["bottle", "screw", "metal_nut"])
        cfg = config(fake, tmp_path, invalid_reply_retries=0)
        with pytest.raises(
            LlmAnnotationError, match=r"1 of 3 images.*\n  src/screw/001.png: malformed"
        ):
            annotate_with_llm(items, cfg, progress=False)
        assert fake.count == 3 and (Path(cfg.cache_dir) / "failures.json").is_file()
        state["broken"] = False
        run = annotate_with_llm(items, cfg, progress=False)
    finally:
        fake.close()
    assert fake.count == 4 and (run.sent, run.cached) == (1, 2)  # only the failed one again
    assert not (Path(cfg.cache_dir) / "failures.json").exists()
    assert "screw" in run.answers[1]["description"]


# --- concurrency -------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_limit(tmp_path: Path, concurrency: int) -> None:
    fake = FakeLlm(lambda n, b: Reply(**{**vars(echo(n, b)), "delay": 0.15}))
    try:
        cfg = config(fake, tmp_path, concurrency=concurrency)
        items = make_items(tmp_path, [f"c{i}" for i in range(2 * concurrency + 2)])
        run = annotate_with_llm(items, cfg, progress=False)
    finally:
        fake.close()
    assert fake.max_in_flight == concurrency
    assert [a["description"].rsplit(" ", 1)[1] for a in run.answers] == [
        f"c{i}." for i in range(len(items))
    ]


# --- the annotate pipeline end to end ----------------------------------------------------------


def write_tree(root: Path) -> pd.DataFrame:
    return write_widget_tree(
        root,
        [  # name, label, defect id, source defect name, mask box (y0, y1, x0, x1)
            ("good_0", 0, -1, "", None),
            ("scratch_0", 1, 0, "scratch", (1, 4, 1, 6)),
            ("stain_0", 1, 3, "stain", (10, 15, 10, 15)),
            ("odd_0", 1, -1, "weird", (6, 10, 6, 10)),
        ],
    )


def catalog_with_files(tmp_path: Path, inputs: dict[str, Any]) -> DataCatalog:
    """The real catalog entries of riad_coco / riad_qa, written under tmp_path."""
    entries = yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())
    config = {}
    for name in ("riad_coco", "riad_qa"):
        entry = dict(entries[name])
        entry["filepath"] = str(tmp_path / "riad" / Path(entry["filepath"]).name)
        config[name] = entry
    catalog = DataCatalog.from_config(config)
    for name, value in inputs.items():
        catalog[name] = MemoryDataset(value)
    return catalog


def test_annotate_pipeline_writes_qa_jsonl_from_the_llm(server: FakeLlm, tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    manifest = write_tree(root)
    params = {
        "backend": "llm",
        "progress": False,
        "llm": {
            "base_url": server.url,
            "model": "test-vlm",
            "backoff_s": 0.001,
            "max_backoff_s": 0.01,
            "cache_dir": str(tmp_path / "llm_cache"),
        },
    }
    inputs = {
        "manifest": manifest,
        "dataset_roots": {"synthetic": str(root)},
        "taxonomy": TAXONOMY,
        "params:annotate": params,
    }
    SequentialRunner().run(create_pipeline(), catalog_with_files(tmp_path, inputs))
    lines = (tmp_path / "riad" / "qa.jsonl").read_text().splitlines()
    qa = [json.loads(line) for line in lines]
    assert [r["image_path"] for r in qa] == [
        "widget/test/scratch_0.png",
        "widget/test/stain_0.png",
        "widget/test/odd_0.png",
    ]
    assert qa[0]["description"] == "LLM: Defect type: scratch. Object class: widget."
    assert qa[1]["description"] == "LLM: Defect type: stain. Object class: widget."
    assert qa[2]["description"].startswith(
        "LLM: Defect type: unknown (the source dataset calls it 'weird')"
    )
    assert {r["annotator"] for r in qa} == {"llm:test-vlm"}
    assert all(r["impact"] and r["suggestion"] for r in qa)
    coco = json.loads((tmp_path / "riad" / "instances.json").read_text())
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]] == [
        (1, 0, [1, 1, 5, 3]),
        (2, 3, [10, 10, 5, 5]),
    ]
    mask = rle_to_mask(coco["annotations"][1]["segmentation"])
    assert mask.shape == (16, 16) and mask[10:15, 10:15].all() and mask.sum() == 25
    assert server.count == 3
    # a rerun sends nothing and writes the same files
    (tmp_path / "riad" / "qa.jsonl").unlink()
    SequentialRunner().run(create_pipeline(), catalog_with_files(tmp_path, inputs))
    assert server.count == 3
    assert (tmp_path / "riad" / "qa.jsonl").read_text().splitlines() == lines


def test_annotate_pipeline_writes_nothing_when_an_image_fails(tmp_path: Path) -> None:
    fake = FakeLlm(lambda n, b: chat("no") if "stain" in user_text_of(b) else echo(n, b))
    root = tmp_path / "synthetic"
    inputs = {
        "manifest": write_tree(root),
        "dataset_roots": {"synthetic": str(root)},
        "taxonomy": TAXONOMY,
        "params:annotate": {
            "backend": "llm",
            "progress": False,
            "llm": {
                "base_url": fake.url,
                "model": "m",
                "invalid_reply_retries": 0,
                "cache_dir": str(tmp_path / "llm_cache"),
            },
        },
    }
    try:
        with pytest.raises(Exception, match="synthetic/widget/test/stain_0.png: malformed reply"):
            SequentialRunner().run(create_pipeline(), catalog_with_files(tmp_path, inputs))
    finally:
        fake.close()
    assert not (tmp_path / "riad").exists()
