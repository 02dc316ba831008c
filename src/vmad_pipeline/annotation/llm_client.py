"""A minimal OpenAI-compatible chat-completions client with bounded retries.

POST ``{base_url}/chat/completions`` with a JSON body; the reply's ``choices[0].message.content``
is returned. Works against vLLM, Ollama (``/v1``), llama.cpp server and hosted APIs.

Written on ``urllib.request`` (standard library) on purpose: one POST with a timeout and a
status code is all that is needed, and no HTTP package is a declared dependency of the project.

Retries: timeouts, connection errors, HTTP 429 and 5xx are retried up to ``max_retries`` times
with exponential backoff and jitter, honouring a ``Retry-After`` header (seconds or HTTP date,
capped at ``max_backoff_s``). Any other 4xx is not retried: :class:`LlmHttpError` names the
status and the start of the body. The API key is sent as ``Authorization: Bearer`` and never
logged or put in an error message.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ChatClient",
    "LlmHttpError",
    "LlmReplyError",
    "LlmTransportError",
    "backoff_delay",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

_BODY_EXCERPT = 300  # characters of an error body quoted in messages


class LlmHttpError(RuntimeError):
    """A non-retryable HTTP status (4xx other than 429): the request itself is wrong."""

    def __init__(self, status: int, body: str, url: str) -> None:
        self.status = status
        self.body = body[:_BODY_EXCERPT]
        super().__init__(f"HTTP {status} from {url} (not retried): {self.body!r}")


class LlmTransportError(RuntimeError):
    """Timeouts, connection errors, HTTP 429 or 5xx that persisted through every retry."""


class LlmReplyError(ValueError):
    """The server answered 200, but the reply is not what was asked for (the reason says why)."""


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
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key or None
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient(url={self.url!r}, auth={'yes' if self._api_key else 'no'})"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _post_once(self, body: bytes) -> Any:
        """One POST; the decoded JSON reply, or _Retryable / LlmHttpError / LlmReplyError."""
        request = urllib.request.Request(
            self.url, data=body, headers=self._headers(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            text = _read_error_body(err)
            if err.code == 429 or err.code >= 500:
                retry_after = parse_retry_after(
                    err.headers.get("Retry-After") if err.headers else None
                )
                raise _Retryable(
                    f"HTTP {err.code}: {text[:_BODY_EXCERPT]!r}", retry_after
                ) from None
            raise LlmHttpError(err.code, text, self.url) from None
        except TimeoutError as err:
            raise _Retryable(f"timeout after {self.timeout_s:g} s ({err})") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise _Retryable(f"timeout after {self.timeout_s:g} s ({err.reason})") from None
            raise _Retryable(f"connection error: {err.reason}") from None
        except (ConnectionError, http.client.HTTPException, OSError) as err:
            raise _Retryable(f"connection error: {type(err).__name__}: {err}") from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            excerpt = raw[:_BODY_EXCERPT].decode("utf-8", "replace")
            raise LlmReplyError(f"HTTP 200 body is not JSON: {excerpt!r}") from None

    def complete(self, payload: Mapping[str, Any]) -> tuple[str, int]:
        """Send one chat-completions request, retrying transient failures.

        Returns ``(content, retries)``: the first choice's message text and how many retries it
        took. Raises :class:`LlmTransportError` when every attempt failed transiently,
        :class:`LlmHttpError` on a non-retryable status, :class:`LlmReplyError` when the 200
        reply has no message text.
        """
        body = json.dumps(payload).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            try:
                reply = self._post_once(body)
            except _Retryable as err:
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
            return message_text(reply), attempt
        raise AssertionError("unreachable")  # the loop returns or raises


def _read_error_body(err: urllib.error.HTTPError) -> str:
    try:
        return err.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the status alone is enough to report
        return ""


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
