"""The chat client's own guarantees against loopback servers (:mod:`helpers.fake_llm`): no
redirect is followed (the key never reaches another origin), one deadline bounds the whole
request, and reply and error bodies are read only up to a limit."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any, BinaryIO

import pytest
from helpers.fake_llm import FakeLlm, Reply, chat

from vmad_pipeline.annotation.llm_client import (
    ChatClient,
    LlmHttpError,
    LlmReplyTooLargeError,
    LlmTransportError,
)

KEY = "sk-very-secret"
PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
GOOD = json.dumps({"choices": [{"message": {"content": "fine"}}]}).encode()


def client(server: FakeLlm, **overrides: Any) -> ChatClient:
    fast = {"api_key": KEY, "timeout_s": 5.0, "max_retries": 2, "backoff_s": 0.001}
    return ChatClient(base_url=server.url, **{**fast, **overrides})


def outcome(call: Callable[[], Any]) -> BaseException | None:
    """The exception ``call`` raised (None if it returned)."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the test inspects whatever it is
        return error
    return None


@pytest.fixture
def servers():
    made: list[FakeLlm] = []

    def make(script: Callable[[int, dict], Reply]) -> FakeLlm:
        made.append(FakeLlm(script))
        return made[-1]

    yield make
    for server in made:
        server.close()


# --- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_origin_is_not_followed_with_the_key(servers, status: int) -> None:
    other = servers(lambda n, b: chat("stolen"))
    target = other.url + "/chat/completions"
    first = servers(lambda n, b: Reply(status=status, body="moved", headers={"Location": target}))
    error = outcome(lambda: client(first).complete(PAYLOAD))
    assert [h.get("Authorization") for _, _, h in other.requests if "Authorization" in h] == []
    assert other.requests == []  # nothing at all was sent to the other origin
    assert first.count == 1  # refused at once, not retried
    assert isinstance(error, LlmHttpError) and error.status == status
    assert f"HTTP {status} redirect" in str(error) and target in str(error)
    assert KEY not in str(error) and KEY not in repr(error.args)


def test_same_origin_redirect_is_refused_too(servers) -> None:
    """Documented choice: no redirect is followed, even to the same origin."""
    server = servers(
        lambda n, b: Reply(status=307, body="", headers={"Location": "/v2/chat/completions"})
    )
    error = outcome(lambda: client(server).complete(PAYLOAD))
    assert isinstance(error, LlmHttpError) and error.status == 307
    assert f"{server.url[:-3]}/v2/chat/completions" in str(error)  # the target, made absolute
    assert [(m, p) for m, p, _ in server.requests] == [("POST", "/v1/chat/completions")]


# --- one deadline per request ------------------------------------------------------------------

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def drip(where: str, pause: float = 0.25, n_bytes: int = 40) -> Callable[[BinaryIO], None]:
    """A response that trickles one byte every ``pause`` s: in its headers, or in its body
    (``n_bytes`` of JSON-ish padding, about ``n_bytes * pause`` s in all)."""
    body = b" " * (n_bytes - len(GOOD)) + GOOD
    whole = HEAD % len(body) + body

    def write(out: BinaryIO) -> None:
        start = 0 if where == "headers" else len(whole) - len(body)
        out.write(whole[:start])
        for i in range(start, len(whole)):
            out.write(whole[i : i + 1])
            time.sleep(pause)

    return write


@pytest.mark.parametrize("where", ["headers", "body"])
def test_slow_drip_is_cut_at_the_request_deadline(servers, where: str) -> None:
    server = servers(lambda n, b: Reply(raw=drip(where)))  # ~10 s of trickle, 4 s per byte max
    chat_client = client(server, timeout_s=1.0, max_retries=0)
    t0 = time.monotonic()
    error = outcome(lambda: chat_client.complete(PAYLOAD))
    elapsed = time.monotonic() - t0
    assert elapsed < 4.0, f"held for {elapsed:.1f} s with a 1 s deadline"  # guard: no hang
    assert isinstance(error, LlmTransportError)
    assert "timeout after 1 s" in str(error) and "deadline" in str(error)


def test_deadline_timeout_is_retried_like_any_timeout(servers) -> None:
    server = servers(lambda n, b: Reply(raw=drip("body")) if n == 0 else chat("ok"))
    content, retries = client(server, timeout_s=1.0, max_retries=1).complete(PAYLOAD)
    assert (content, retries, server.count) == ("ok", 1, 2)


# --- size limits -------------------------------------------------------------------------------

CAP = 256 * 1024
CHUNK = b"x" * 65536  # made once: the server sends it again and again, allocating nothing new


def endless(status: int, declared: int | None, total: int = 16 << 20) -> Callable:
    """A response of ``total`` bytes sent in chunks; ``declared`` as its Content-Length (None:
    no length, the body ends when the connection closes)."""
    reason = {200: b"OK", 400: b"Bad Request", 500: b"Internal Server Error"}[status]

    def write(out: BinaryIO) -> None:
        out.write(b"HTTP/1.0 %d %s\r\nContent-Type: application/json\r\n" % (status, reason))
        out.write(b"" if declared is None else b"Content-Length: %d\r\n" % declared)
        out.write(b"\r\n")
        for _ in range(total // len(CHUNK)):
            out.write(CHUNK)

    return write


def peak_bytes(call: Callable[[], Any]) -> tuple[BaseException | None, int]:
    """(what ``call`` raised, the peak of Python allocations while it ran)."""
    tracemalloc.start()
    try:
        error = outcome(call)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize(
    "declared", [None, 10**12], ids=["no-content-length", "huge-content-length"]
)
def test_reply_over_the_cap_is_refused_without_holding_it(servers, declared: int | None) -> None:
    server = servers(lambda n, b: Reply(raw=endless(200, declared)))
    chat_client = client(server, max_reply_bytes=CAP)
    error, peak = peak_bytes(lambda: chat_client.complete(PAYLOAD))
    assert isinstance(error, LlmReplyTooLargeError)
    assert f"max_reply_bytes = {CAP}" in str(error)
    assert server.count == 1  # not retried
    assert peak < 4 * CAP, f"peak {peak} bytes for a {CAP}-byte cap"  # 16 MiB were on offer


def test_reply_within_the_cap_is_read_whole(servers) -> None:
    content = "y" * (CAP // 2)
    server = servers(lambda n, b: chat(content))
    assert client(server, max_reply_bytes=CAP).complete(PAYLOAD) == (content, 0)


@pytest.mark.parametrize("status", [400, 500])
def test_error_body_is_read_only_up_to_an_excerpt(servers, status: int) -> None:
    server = servers(lambda n, b: Reply(raw=endless(status, None)))
    chat_client = client(server, max_retries=0, max_reply_bytes=CAP)
    error, peak = peak_bytes(lambda: chat_client.complete(PAYLOAD))
    assert isinstance(error, LlmHttpError if status == 400 else LlmTransportError)
    assert f"HTTP {status}" in str(error) and "xxxx" in str(error)
    assert peak < 4 * CAP, f"peak {peak} bytes reading a {status} body"


# --- the key -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 503])
def test_key_echoed_in_an_error_body_is_not_repeated(servers, status: int) -> None:
    """A server (or proxy) that echoes the request headers into its error must not get the key
    into our messages, logs or failures.json."""
    server = servers(lambda n, b: Reply(status=status, body=f"bad header: Bearer {KEY}"))
    error = outcome(lambda: client(server, max_retries=0).complete(PAYLOAD))
    assert isinstance(error, LlmHttpError | LlmTransportError)
    assert "bad header: Bearer" in str(error) and KEY not in str(error)
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"  # it was sent, as it should


STRADDLE = "x" * (300 - 8 - len("Bearer "))  # the key starts 8 characters before the cut


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=400, body=f"{STRADDLE}Bearer {KEY}"),
        Reply(status=200, body=f"{STRADDLE}Bearer {KEY}"),
        # json.dumps of {"message": ...} puts 13 characters before the text
        Reply(status=200, body={"error": {"message": f"{STRADDLE[13:]}Bearer {KEY}"}}),
    ],
    ids=["error-body", "not-json", "no-choices"],
)
def test_key_at_the_excerpt_cut_leaves_no_part_of_it(servers, reply: Reply) -> None:
    """The excerpt quoted in a message is cut at a few hundred characters: redacting after the
    cut would leave the start of a key that straddles it."""
    server = servers(lambda n, b: reply)
    error = outcome(lambda: client(server, max_retries=0).complete(PAYLOAD))
    assert error is not None and KEY[:6] not in str(error), str(error)
