"""A small OpenAI-compatible chat server on loopback, for the LLM annotation backend's tests.

The server (``http.server`` in a thread, port 0) answers each POST with whatever the test's
``script(n, body)`` returns, and records every request body, header, arrival time and the
largest number of requests it had in flight at once. Every request of any method is also
recorded in ``requests`` (method, path, headers): a redirected client may arrive with a GET.
A :class:`Reply` with ``raw`` writes the whole response itself (slow drips, endless bodies).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON; str -> sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: Callable[[BinaryIO], None] | None = None  # writes status line, headers and body itself


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
    """The server; ``url`` is its ``base_url``; call :meth:`close` when done."""

    def __init__(self, script: Callable[[int, dict], Reply] = echo) -> None:
        self.script = script
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # every method
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with fake._lock:
                    fake.requests.append(("GET", self.path, dict(self.headers)))
                self.send_error(405)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append(("POST", self.path, dict(self.headers)))
                    n = len(fake.bodies)
                    fake.bodies.append(body)
                    fake.headers.append(dict(self.headers))
                    fake.times.append(time.monotonic())
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    reply = fake.script(n, body)
                    time.sleep(reply.delay)
                    if reply.raw is not None:
                        reply.raw(self.wfile)
                        return
                    data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data.encode())))
                    self.end_headers()
                    self.wfile.write(data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout and size-limit tests)
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
