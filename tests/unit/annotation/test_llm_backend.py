"""The LLM annotation backend against a small OpenAI-compatible server on loopback
(:mod:`helpers.fake_llm`): what is sent, retries, timeouts, rate limits, errors, the reply cache
and the concurrency limit."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.fake_llm import FakeLlm, Reply, chat, echo, user_text_of
from helpers.trees import taxonomy_params
from PIL import Image

from vmad_pipeline.annotation import QaItem, Taxonomy, mask_geometry
from vmad_pipeline.annotation.llm import LlmAnnotationError, annotate_with_llm
from vmad_pipeline.annotation.llm_client import LlmHttpError
from vmad_pipeline.configs.annotate import LlmConfig

TAXONOMY = taxonomy_params()


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


def test_redirect_stops_the_run_and_reaches_no_other_server(tmp_path: Path) -> None:
    other = FakeLlm()
    moved = Reply(status=302, body="", headers={"Location": other.url + "/chat/completions"})
    fake = FakeLlm(lambda n, b: moved)
    try:
        cfg = config(fake, tmp_path, concurrency=1)
        with pytest.raises(LlmHttpError, match=r"HTTP 302 redirect .* refused"):
            annotate_with_llm(make_items(tmp_path, ["a", "b", "c", "d"]), cfg, progress=False)
        assert fake.count <= 2 and other.requests == []  # fatal: the queue is dropped
    finally:
        fake.close()
        other.close()


def test_reply_over_max_reply_bytes_fails_that_image_only(tmp_path: Path) -> None:
    def script(n: int, body: dict) -> Reply:
        if "Object class: huge" in user_text_of(body):
            return chat("x" * 5000)
        return echo(n, body)

    fake = FakeLlm(script)
    try:
        cfg = config(fake, tmp_path, max_reply_bytes=2048)
        with pytest.raises(
            LlmAnnotationError,
            match=r"1 of 2 images.*\n  src/huge/001.png: reply .*llm\.max_reply_bytes = 2048",
        ):
            annotate_with_llm(make_items(tmp_path, ["bottle", "huge"]), cfg, progress=False)
    finally:
        fake.close()
    assert fake.count == 2  # not retried


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


def test_a_run_of_failed_requests_stops_the_run_naming_the_server_and_the_cache(
    tmp_path: Path,
) -> None:
    """A server that fails every request (a 503, a timeout, bytes dripped past the deadline) no
    longer holds the run for every image's retries (158 images once took 26 minutes): after
    max_consecutive_failures failed requests in a row the run stops, naming the server, the
    last reason and the progress kept in the cache."""
    from vmad_pipeline.annotation.llm_client import LlmCircuitOpenError

    fake = FakeLlm(lambda n, b: echo(n, b) if n < 2 else Reply(status=503, body="down"))
    try:
        cfg = config(fake, tmp_path, concurrency=1, max_retries=4, max_consecutive_failures=3)
        items = make_items(tmp_path, [f"c{i}" for i in range(20)])
        with pytest.raises(LlmCircuitOpenError) as err:
            annotate_with_llm(items, cfg, progress=False)
    finally:
        fake.close()
    assert fake.count == 2 + 3  # not 2 + 18 x 5 requests
    message = str(err.value)
    assert "3 requests in a row" in message and fake.url in message and "HTTP 503" in message
    assert "2 answers sent in this run" in message and cfg.cache_dir in message
    assert "max_consecutive_failures" in message
    assert len([p for p in cache_files(cfg) if p.is_file()]) == 2  # the progress is kept
    with pytest.raises(ValueError, match="max_consecutive_failures"):
        config(fake, tmp_path, max_consecutive_failures=-1)
