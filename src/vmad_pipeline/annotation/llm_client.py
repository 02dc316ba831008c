"""A minimal OpenAI-compatible chat-completions client with bounded retries.

POST ``{base_url}/chat/completions`` with a JSON body; the reply's ``choices[0].message.content``
is returned. Works against vLLM, Ollama (``/v1``), llama.cpp server and hosted APIs.

Written on ``urllib.request`` (standard library) on purpose: one POST with a deadline and a
status code is all that is needed, and no HTTP package is a declared dependency of the project
(:mod:`~vmad_pipeline.annotation.llm_transport` says why none would bound the request anyway).

Retries: timeouts, connection errors, HTTP 429 and 5xx are retried up to ``max_retries`` times
with exponential backoff and jitter, honouring a ``Retry-After`` header (seconds or HTTP date,
capped at ``max_backoff_s``). Any other 4xx is not retried: :class:`LlmHttpError` names the
status and the start of the body.

Limits, per request:

* ``timeout_s`` is a deadline for the whole request (connect, headers and body), not per socket
  read: a server that trickles its reply is cut off when it passes (a retryable timeout).
* The reply body is read in chunks up to ``max_reply_bytes`` (a larger Content-Length is refused
  before reading): :class:`LlmReplyTooLargeError`, not retried. Error bodies are read only up to
  :data:`ERROR_BODY_BYTES`, for the excerpt quoted in the message.
* Redirects (any 3xx) are never followed, to another origin or to the same one: the request
  carries the API key, and a POST that must be redirected points at a wrong ``base_url``.
  :class:`LlmRedirectError` names the status and the target.

The API key is sent as ``Authorization: Bearer`` and never logged or put in an error message
(text from the server is quoted with the key blanked out, should the server echo it).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from vmad_pipeline.annotation.llm_transport import Deadline, open_request

__all__ = [
    "ChatClient",
    "ERROR_BODY_BYTES",
    "LlmHttpError",
    "LlmRedirectError",
    "LlmReplyError",
    "LlmReplyTooLargeError",
    "LlmTransportError",
    "backoff_delay",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

_BODY_EXCERPT = 300  # characters of an error body quoted in messages
ERROR_BODY_BYTES = 4096  # bytes of an error body read (the rest is left unread)
_CHUNK = 64 * 1024  # bytes per read of a reply body


class LlmHttpError(RuntimeError):
    """A non-retryable HTTP status (4xx other than 429): the request itself is wrong."""

    def __init__(self, status: int, body: str, url: str) -> None:
        self.status = status
        self.body = body[:_BODY_EXCERPT]
        super().__init__(f"HTTP {status} from {url} (not retried): {self.body!r}")


class LlmRedirectError(LlmHttpError):
    """A 3xx answer. No redirect is followed (see the module docstring); ``target`` is where the
    server pointed, resolved against the request URL."""

    def __init__(self, status: int, target: str, url: str) -> None:
        self.status = status
        self.body = ""
        self.target = target
        RuntimeError.__init__(
            self,
            f"HTTP {status} redirect from {url} to {target} refused: redirects are not followed "
            "(the request carries the API key); set annotate.llm.base_url to the final address",
        )


class LlmReplyTooLargeError(RuntimeError):
    """The reply body is larger than ``max_reply_bytes`` (not retried: the next one would be
    as large)."""


class LlmTransportError(RuntimeError):
    """Timeouts, connection errors, HTTP 429 or 5xx that persisted through every retry."""


class LlmReplyError(ValueError):
    """The server answered 200, but the reply is not what was asked for (the reason says why)."""


class LlmCircuitOpenError(RuntimeError):
    """Too many requests in a row failed: the run stops instead of retrying every image."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (decimals accepted) or an
    HTTP date; None when absent or unparseable. Never negative."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number ``attempt`` (0-based): ``base_s * 2**attempt`` capped at
    ``max_s``, jittered uniformly into [half, full] so parallel workers spread out; at least the
    server's ``retry_after`` (itself capped at ``max_s``)."""
    cap = min(max_s, base_s * (2.0**attempt))
    delay = cap * (0.5 + 0.5 * (rng or random).random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_s))
    return delay


class ChatClient:
    """Thread-safe: one instance is shared by the worker threads (each call opens its own
    connection; the only shared state is the jitter RNG, behind a lock)."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        seed: int | None = None,
        max_reply_bytes: int = 4 * 1024 * 1024,
        max_consecutive_failures: int = 0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key or None
        self.timeout_s = timeout_s
        self.max_reply_bytes = max_reply_bytes
        https = urllib.parse.urlsplit(self.url).scheme == "https"
        self._ssl_context = ssl.create_default_context() if https else None
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        # the circuit breaker: failed requests in a row, over every thread (0: no breaker)
        self.max_consecutive_failures = max_consecutive_failures
        self._failures, self._last_failure = 0, ""
        self._failures_lock = threading.Lock()

    def _check_circuit(self) -> None:
        """LlmCircuitOpenError once ``max_consecutive_failures`` requests in a row failed."""
        limit = self.max_consecutive_failures
        if limit and self._failures >= limit:
            raise LlmCircuitOpenError(
                f"{self._failures} requests in a row to {self.url} failed (the last: "
                f"{self._last_failure})"
            )

    def _count(self, failure: str | None) -> None:
        """A request's outcome for the breaker: a failure (its reason) or a success (None)."""
        with self._failures_lock:
            if failure is None:
                self._failures = 0
            else:
                self._failures, self._last_failure = self._failures + 1, failure

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient(url={self.url!r}, auth={'yes' if self._api_key else 'no'})"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _redact(self, text: str) -> str:
        """Server-supplied text with our API key blanked out (a server may echo headers). Redact
        before cutting an excerpt, so no part of the key is left at the cut."""
        return text.replace(self._api_key, "<api key>") if self._api_key else text

    def _excerpt(self, data: bytes) -> str:
        return self._redact(data[:ERROR_BODY_BYTES].decode("utf-8", "replace"))[:_BODY_EXCERPT]

    def _timeout(self) -> _Retryable:
        return _Retryable(
            f"timeout after {self.timeout_s:g} s (the deadline for the whole request: "
            "connect, headers and body)"
        )

    def _post_once(self, body: bytes) -> Any:
        """One POST; the decoded JSON reply, or _Retryable / LlmHttpError / LlmReplyError /
        LlmReplyTooLargeError."""
        request = urllib.request.Request(
            self.url, data=body, headers=self._headers(), method="POST"
        )
        with Deadline(self.timeout_s) as deadline:
            try:
                raw = self._exchange(request, deadline)
            except (LlmHttpError, LlmReplyTooLargeError, _Retryable):
                raise
            except urllib.error.URLError as err:
                if deadline.expired or isinstance(err.reason, TimeoutError):
                    raise self._timeout() from None
                raise _Retryable(f"connection error: {err.reason}") from None
            except (ConnectionError, http.client.HTTPException, OSError) as err:
                if deadline.expired or isinstance(err, TimeoutError):
                    raise self._timeout() from None
                raise _Retryable(f"connection error: {type(err).__name__}: {err}") from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LlmReplyError(f"HTTP 200 body is not JSON: {self._excerpt(raw)!r}") from None

    def _exchange(self, request: urllib.request.Request, deadline: Deadline) -> bytes:
        """Send the request and read the reply body within the deadline and the size limit."""
        try:
            response = open_request(request, deadline, self._ssl_context)
        except urllib.error.HTTPError as err:
            with err:
                raise self._status_error(err, deadline) from None
        with response:
            declared = _content_length(response)
            if declared is not None and declared > self.max_reply_bytes:
                raise self._too_large(f"declares {declared} bytes (Content-Length)")
            data = bytearray()
            while chunk := response.read1(_CHUNK):
                data += chunk
                if len(data) > self.max_reply_bytes:
                    raise self._too_large(f"exceeded it after {len(data)} bytes")
        deadline.check()  # a read cut short by the deadline ends like an end of file
        if declared is not None and len(data) < declared:
            raise _Retryable(f"connection error: reply ended after {len(data)} of {declared} bytes")
        return bytes(data)

    def _too_large(self, what: str) -> LlmReplyTooLargeError:
        return LlmReplyTooLargeError(
            f"reply from {self.url} {what}: over the limit annotate.llm.max_reply_bytes = "
            f"{self.max_reply_bytes} (not retried; raise the limit if the replies are meant "
            "to be that large)"
        )

    def _status_error(self, err: urllib.error.HTTPError, deadline: Deadline) -> Exception:
        """The exception for a status >= 300: a refused redirect, a retryable 429 / 5xx (with
        its Retry-After), or a non-retryable LlmHttpError."""
        headers = err.headers
        if 300 <= err.code < 400:
            location = headers.get("Location", "") if headers else ""
            target = urllib.parse.urljoin(self.url, location) if location else "(no Location)"
            return LlmRedirectError(err.code, self._redact(target[:500]), self.url)
        text = self._redact(_read_error_body(err))
        if deadline.expired:
            return self._timeout()
        if err.code == 429 or err.code >= 500:
            retry_after = parse_retry_after(headers.get("Retry-After") if headers else None)
            return _Retryable(f"HTTP {err.code}: {text[:_BODY_EXCERPT]!r}", retry_after)
        return LlmHttpError(err.code, text, self.url)

    def complete(self, payload: Mapping[str, Any]) -> tuple[str, int]:
        """Send one chat-completions request, retrying transient failures.

        Returns ``(content, retries)``: the first choice's message text and how many retries it
        took. Raises :class:`LlmCircuitOpenError` once ``max_consecutive_failures`` requests in
        a row (over every thread) failed transiently, :class:`LlmTransportError` when every
        attempt failed transiently,
        :class:`LlmHttpError` on a non-retryable status (:class:`LlmRedirectError` on any 3xx),
        :class:`LlmReplyTooLargeError` over ``max_reply_bytes``, :class:`LlmReplyError` when
        the 200 reply has no message text.
        """
        body = json.dumps(payload).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            self._check_circuit()
            try:
                reply = self._post_once(body)
            except _Retryable as err:
                self._count(err.reason)
                self._check_circuit()
                if attempt == self.max_retries:
                    raise LlmTransportError(
                        f"{err.reason} (gave up after {attempt + 1} attempts)"
                    ) from None
                with self._rng_lock:
                    delay = backoff_delay(
                        attempt,
                        base_s=self.backoff_s,
                        max_s=self.max_backoff_s,
                        retry_after=err.retry_after,
                        rng=self._rng,
                    )
                logger.debug("retry %d in %.3f s: %s", attempt + 1, delay, err.reason)
                time.sleep(delay)
                continue
            self._count(None)
            try:
                return message_text(reply), attempt
            except LlmReplyError:  # say why again, on the reply with the key blanked out
                message_text(json.loads(self._redact(json.dumps(reply))))
                raise
        raise AssertionError("unreachable")  # the loop returns or raises


def _read_error_body(err: urllib.error.HTTPError) -> str:
    """The start of an error body (at most ERROR_BODY_BYTES are read), decoded leniently."""
    try:
        return err.read(ERROR_BODY_BYTES).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the status alone is enough to report
        return ""


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def message_text(reply: Any) -> str:
    """``choices[0].message.content`` of a chat-completions reply (a string, or a list of text
    parts joined); LlmReplyError saying what is missing otherwise."""
    if not isinstance(reply, Mapping):
        raise LlmReplyError(f"reply is not a JSON object: {str(reply)[:_BODY_EXCERPT]!r}")
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        detail = reply.get("error", reply)
        raise LlmReplyError(f"reply has no choices: {json.dumps(detail)[:_BODY_EXCERPT]}")
    message = choices[0].get("message") if isinstance(choices[0], Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, list):  # content parts
        content = "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text"
        )
    if not isinstance(content, str) or not content.strip():
        finish = choices[0].get("finish_reason") if isinstance(choices[0], Mapping) else None
        raise LlmReplyError(f"reply has no message content (finish_reason={finish!r})")
    return content
