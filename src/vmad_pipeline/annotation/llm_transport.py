"""The HTTP layer under :class:`~vmad_pipeline.annotation.llm_client.ChatClient`: a urllib opener
that follows no redirect and whose connections answer to one deadline per request.

Why not a socket timeout alone: ``urlopen(timeout=t)`` bounds each blocking socket operation, so a
server that sends one byte every ``t / 2`` seconds holds a request forever. :class:`Deadline` arms
a timer for the whole request (connect, TLS handshake, request, headers, body); when it fires, it
shuts the connection's socket down, which ends whatever read or write is blocked on it, and the
client reports a timeout. Name resolution happens before a socket exists and is bounded by the
operating system's resolver only.

Why urllib and not http.client directly: the opener keeps urllib's proxy support (the
``http_proxy`` / ``https_proxy`` / ``no_proxy`` environment variables) and its HTTPS defaults;
only the connection classes and the redirect handler are ours. No HTTP package is a declared
dependency of the project, and none bounds the whole request either (httpx's, requests' and
urllib3's timeouts are per operation too).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

__all__ = ["Deadline", "DeadlineExceeded", "open_request"]


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed (raised where a step notices it)."""


class Deadline:
    """One request's total time limit. Use as a context manager around the whole exchange; every
    socket a connection makes inside registers with :meth:`watch`, and is shut down when time
    is up (or at once, if made after that)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def check(self) -> None:
        """DeadlineExceeded if time is up (a read the timer cut short ends like end-of-file)."""
        if self.expired or time.monotonic() >= self.end:
            raise DeadlineExceeded(f"deadline of {self.seconds:g} s passed")

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    """End every blocked and later read or write on ``sock``. The plain socket's method, also
    for a TLS socket: the file descriptor is shut, the TLS object is left as it is."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # already closed, detached (wrapped in TLS), or not connected yet
        pass


class _Watched:
    """Mixin for http.client connections: every socket assigned to ``sock`` (the TCP one, then
    its TLS wrapper) is watched by the request's deadline. The socket itself, not the connection,
    since urllib drops ``connection.sock`` once the headers are read while the response keeps
    reading from it."""

    deadline: Deadline | None = None

    @property
    def sock(self) -> socket.socket | None:
        return self.__dict__.get("_sock")

    @sock.setter
    def sock(self, value: socket.socket | None) -> None:
        self.__dict__["_sock"] = value
        if value is not None and self.deadline is not None:
            self.deadline.watch(value)

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if self.deadline is not None:
            self.deadline.check()  # the timer fired during connect: do not go on


class _HttpConnection(_Watched, http.client.HTTPConnection):
    pass


class _HttpsConnection(_Watched, http.client.HTTPSConnection):
    pass


def _factory(cls: type, deadline: Deadline) -> Callable[..., http.client.HTTPConnection]:
    def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        connection = cls(host, **kwargs)
        connection.deadline = deadline
        return connection

    return make


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_factory(_HttpConnection, self._deadline), req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline, context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self._deadline = deadline
        self._ssl_context = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        maker = _factory(_HttpsConnection, self._deadline)
        return self.do_open(maker, req, context=self._ssl_context)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Takes the place of urllib's redirect handler: every 3xx reaches the caller as an
    HTTPError, unread, so the caller decides (it refuses them all)."""

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> None:
        return None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def open_request(
    request: urllib.request.Request, deadline: Deadline, context: ssl.SSLContext | None
) -> http.client.HTTPResponse:
    """Send ``request`` through an opener bound to ``deadline``; the response (headers read) or
    urllib's exceptions (HTTPError for every status >= 300)."""
    opener = urllib.request.build_opener(
        _NoRedirect(), _HttpHandler(deadline), _HttpsHandler(deadline, context)
    )
    return opener.open(request, timeout=max(deadline.remaining(), 0.001))
