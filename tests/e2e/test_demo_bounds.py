"""The web demo under hostile and concurrent use, over real HTTP on 127.0.0.1 (issue 27): what a
script sends to the page, not what the browser's own checks let through. An upload over the size
limit is refused as it arrives, model calls beyond the queue are refused at once, conversations
beyond the session bound drop the oldest, and many clients at once, a share of them hostile,
are each answered or refused with a message and no trace."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError, Status
from helpers.models import tiny_detector
from helpers.serving import bomb_png, free_port
from PIL import Image

from vmad_pipeline.apps import demo

pytestmark = pytest.mark.usefixtures("gradio_cache")


def png(path: Path, h: int = 40, w: int = 48, seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def served(detector, **bounds):
    """The demo as ``vmad-pipeline demo`` serves it, on a free port, with ``bounds``."""
    port = free_port()
    app = demo.launch(detector, port=port, block=False, **bounds)
    return app, f"http://127.0.0.1:{port}/"


def inspect(client: Client, image: str, category: str = "pcb"):
    return client.predict(handle_file(image), category, None, api_name="/inspect")


def chat_texts(chat) -> list[str]:
    return [part["text"] for message in chat for part in message["content"]]


def test_an_upload_a_queue_and_sessions_past_their_bounds_are_refused(tmp_path):
    detector = tiny_detector()
    entered, release = threading.Event(), threading.Event()
    real = detector.inspect

    def held(*args, **kwargs):  # the model busy until the test lets it go
        entered.set()
        release.wait(60)
        return real(*args, **kwargs)

    detector.inspect = held
    app, url = served(detector, max_upload="20kb", sessions=2, queue=1)
    try:
        big = png(tmp_path / "big.png", 200, 200)  # 120 kB of noise
        with open(big, "rb") as f:  # a client that skips the page's own size check
            sent = httpx.post(f"{url}gradio_api/upload", files={"files": f}, timeout=30)
        assert sent.status_code == 413 and "20480 bytes" in sent.text
        small = png(tmp_path / "small.png")
        clients = [Client(url, verbose=False) for _ in range(3)]
        running = clients[0].submit(handle_file(small), "pcb", None, api_name="/inspect")
        assert entered.wait(30)
        waiting = clients[1].submit(handle_file(small), "pcb", None, api_name="/inspect")
        for _ in range(300):  # until the server holds it in its queue (1 place)
            if waiting.status().code == Status.IN_QUEUE:
                break
            time.sleep(0.1)
        third = clients[2].submit(handle_file(small), "pcb", None, api_name="/inspect")
        with pytest.raises(QueueError, match="Queue is full"):
            third.result(timeout=30)
        release.set()
        for job in (running, waiting):
            assert job.result(timeout=60)[0].startswith("## ")
        inspect(clients[2], small)  # three conversations, two kept: the first one's dropped
        chat, *_ = clients[0].predict("Where is it?", api_name="/ask")
        assert chat == {"__type__": "update"}  # "Inspect an image first": nothing changed
        chat, *_ = clients[2].predict("Where is it?", api_name="/ask")
        assert "Where is it?" in chat_texts(chat)
    finally:
        release.set()
        app.close()


def test_many_clients_at_once_a_share_hostile_are_each_answered_or_told_why(tmp_path):
    app, url = served(tiny_detector())
    good = png(tmp_path / "good.png")
    notes = tmp_path / "notes.png"
    notes.write_text("a text file with an image's name")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    hostile = [  # (image, object name, question), each refused with a message naming why
        (str(notes), "pcb", None, "Not an image this demo can read: notes.png"),
        (str(bomb), "pcb", None, "over this demo's limit"),
        (good, "x" * 100_000, None, "100000 characters"),
        (good, "nut [SEG]", None, "may not contain"),
        (good, "pcb", "why " * 1_000, None),  # a question refused: a warning, chat unchanged
        (good, "pcb", "<image> again", None),
    ]

    def session(i: int):
        """Odd sessions hostile, in turn; even ones inspect and ask as a user does."""
        client = Client(url, verbose=False)
        image, name, question, _ = hostile[i // 2 % 6] if i % 2 else (good, "pcb", "Where?", 0)
        try:
            decision = inspect(client, image, name)[0]
        except AppError as err:
            return str(err), None
        return decision, client.predict(question, api_name="/ask")[0]

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(session, range(24)))
    finally:
        app.close()
    for i, (text, chat) in enumerate(results):
        assert "Traceback" not in text
        reason = hostile[i // 2 % 6][3] if i % 2 else None
        if reason:  # refused with the reason
            assert chat is None and reason in text, (i, text)
            continue
        assert text.startswith("## "), (i, text)  # a decision
        if i % 2 == 0:  # the follow-up answered
            assert "Where?" in chat_texts(chat)
        else:  # a question refused: a warning, the conversation shown as it was
            assert chat == {"__type__": "update"}
