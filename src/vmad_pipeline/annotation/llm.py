"""The LLM backend of the RIAD annotation step: ask an OpenAI-compatible chat endpoint for the
three answers of every anomalous image, in parallel, through an on-disk cache.

Per image (one worker thread each, ``concurrency`` at once): read the file and hash it; build the
prompt (class, defect type, mask summary); look the request key up in the cache; on a miss, send
the image and the prompt (:class:`~vmad_pipeline.annotation.llm_client.ChatClient` retries
transient failures), validate the reply (:func:`~vmad_pipeline.annotation.llm_prompt.parse_answers`;
a malformed one is asked again up to ``invalid_reply_retries`` times) and cache it.

Failure policy: an image that still fails is reported (file + reason) and the run stops with
:class:`LlmAnnotationError` after every other image has been tried, so nothing is returned
half-done while every success is cached and a rerun resumes. HTTP 401, 403 and 404 (wrong key,
no permission, wrong URL or model) and any redirect (a wrong ``base_url``; redirects are never
followed) stop the run at once, since every request would fail alike. A reply over
``max_reply_bytes`` fails its image without a retry.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from vmad_pipeline.annotation.llm_cache import ReplyCache, request_key, write_json_atomic
from vmad_pipeline.annotation.llm_client import (
    ChatClient,
    LlmCircuitOpenError,
    LlmHttpError,
    LlmRedirectError,
    LlmReplyError,
    LlmReplyTooLargeError,
    LlmTransportError,
)
from vmad_pipeline.annotation.llm_prompt import (
    SYSTEM_PROMPT,
    chat_messages,
    image_data_url,
    mask_summary,
    parse_answers,
    sent_size,
    user_text,
)
from vmad_pipeline.annotation.riad import UNKNOWN_DEFECT, Answerer, QaItem
from vmad_pipeline.configs.annotate import LlmConfig

__all__ = ["LlmAnnotationError", "LlmRun", "annotate_with_llm", "llm_answerer", "FATAL_STATUSES"]

logger = logging.getLogger(__name__)

FATAL_STATUSES = frozenset({401, 403, 404})  # every other request would fail the same way
_REPORT_LIMIT = 50  # failures listed in the exception message (all are in failures.json)


class LlmAnnotationError(RuntimeError):
    """Some images got no valid answer after every retry; ``failures`` is [(file, reason)]."""

    def __init__(self, failures: list[tuple[str, str]], total: int, report: str) -> None:
        self.failures = failures
        lines = [f"  {name}: {reason}" for name, reason in failures[:_REPORT_LIMIT]]
        if len(failures) > _REPORT_LIMIT:
            lines.append(f"  ... and {len(failures) - _REPORT_LIMIT} more")
        super().__init__(
            f"LLM annotation failed for {len(failures)} of {total} images (nothing written; the "
            f"successes are cached, a rerun resends only these; full list in {report}):\n"
            + "\n".join(lines)
        )


@dataclass
class LlmRun:
    answers: list[dict[str, str]]
    sent: int = 0  # images answered by the server in this run
    cached: int = 0  # images answered from the cache
    failed: list[tuple[str, str]] = field(default_factory=list)
    retries: int = 0  # extra requests (transient failures and malformed replies)


class _ItemFailed(Exception):
    def __init__(self, reason: str, retries: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retries = retries


def _generation_params(cfg: LlmConfig) -> dict[str, Any]:
    """Everything besides image, prompt and model that shapes the reply (part of the cache key)."""
    return {
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
        "json_mode": cfg.json_mode,
        "max_image_side": cfg.max_image_side,
    }


def prompt_text(item: QaItem, cfg: LlmConfig) -> str:
    """The user text for ``item`` (the system prompt is a constant, part of the key too)."""
    sent = sent_size(item.width, item.height, cfg.max_image_side)
    defect = "unknown" if item.defect is UNKNOWN_DEFECT else item.defect.name
    return user_text(
        category=item.category,
        defect=defect,
        source_label=item.defect_type,
        summary=mask_summary(item.geometry, item.width, item.height, sent),
    )


class _Worker:
    def __init__(self, cfg: LlmConfig, client: ChatClient, cache: ReplyCache) -> None:
        self.cfg = cfg
        self.client = client
        self.cache = cache
        self.params = _generation_params(cfg)

    def payload(self, text: str, data_url: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": chat_messages(text, data_url),
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if self.cfg.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def __call__(self, item: QaItem) -> tuple[str, dict[str, str], int]:
        """("sent" | "cached", answers, retries); _ItemFailed or a fatal LlmHttpError."""
        try:
            data = item.image.read_bytes()
        except OSError as err:
            raise _ItemFailed(f"cannot read image {item.image}: {err}", 0) from None
        text = prompt_text(item, self.cfg)
        key = request_key(
            image_sha256=hashlib.sha256(data).hexdigest(),
            prompt=SYSTEM_PROMPT + "\n" + text,
            model=self.cfg.model,
            params=self.params,
        )
        entry = self.cache.get(key)
        if entry is not None:
            try:
                return "cached", self._valid(json.dumps(entry["answers"])), 0
            except LlmReplyError as err:
                logger.warning(
                    "cached answers for %s fail validation (%s); asking again", item.file_name, err
                )
        try:
            payload = self.payload(text, image_data_url(data, self.cfg.max_image_side))
        except Exception as err:  # noqa: BLE001 - PIL raises many types for a bad image
            raise _ItemFailed(f"cannot encode image {item.image}: {err}", 0) from None
        retries = 0
        reason = ""
        for attempt in range(self.cfg.invalid_reply_retries + 1):
            if attempt:
                retries += 1
            try:
                content, transient_retries = self.client.complete(payload)
                retries += transient_retries
                answers = self._valid(content)
            except LlmReplyError as err:
                reason = f"malformed reply: {err}"
                logger.debug("%s: %s", item.file_name, reason)
                continue
            except LlmTransportError as err:
                raise _ItemFailed(str(err), retries + self.client.max_retries) from None
            except LlmReplyTooLargeError as err:
                raise _ItemFailed(str(err), retries) from None
            except LlmHttpError as err:
                if err.status in FATAL_STATUSES or isinstance(err, LlmRedirectError):
                    raise
                raise _ItemFailed(str(err), retries) from None
            self.cache.put(
                key,
                {
                    "key": key,
                    "file_name": item.file_name,
                    "model": self.cfg.model,
                    "params": self.params,
                    "answers": answers,
                    "reply": content,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            return "sent", answers, retries
        raise _ItemFailed(f"{reason} (after {self.cfg.invalid_reply_retries + 1} replies)", retries)

    def _valid(self, content: str) -> dict[str, str]:
        return parse_answers(content, max_chars=self.cfg.max_answer_chars)


def _client(cfg: LlmConfig) -> tuple[ChatClient, str | None]:
    """The HTTP client, with the API key read from the named environment variable (if set)."""
    api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    client = ChatClient(
        base_url=cfg.base_url,
        api_key=api_key,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        backoff_s=cfg.backoff_s,
        max_backoff_s=cfg.max_backoff_s,
        max_reply_bytes=cfg.max_reply_bytes,
        max_consecutive_failures=cfg.max_consecutive_failures,
    )
    return client, api_key


def _collect(run: LlmRun, items: Sequence[QaItem], i: int, future: cf.Future) -> None:
    """Add one item's outcome (answers or failure, retries, sent or cached) to ``run``."""
    try:
        status, answers, retries = future.result()
    except _ItemFailed as err:
        run.failed.append((items[i].file_name, err.reason))
        run.retries += err.retries
        logger.warning("LLM annotation failed for %s: %s", items[i].file_name, err.reason)
        return
    run.answers[i] = answers
    run.retries += retries
    if status == "sent":
        run.sent += 1
    else:
        run.cached += 1


def _report_failures(run: LlmRun, items: Sequence[QaItem], cache: ReplyCache) -> None:
    """Write the failures (in item order) to ``failures.json`` and raise; or remove the file."""
    report = cache.directory / "failures.json"
    if run.failed:
        order = {it.file_name: n for n, it in enumerate(items)}
        run.failed.sort(key=lambda f: order[f[0]])
        write_json_atomic(report, [{"file": name, "reason": reason} for name, reason in run.failed])
        raise LlmAnnotationError(run.failed, len(items), str(report))
    report.unlink(missing_ok=True)


def annotate_with_llm(items: Sequence[QaItem], cfg: LlmConfig, *, progress: bool = True) -> LlmRun:
    """Answers for every item, in order, or :class:`LlmAnnotationError` naming the failures
    (also written to ``<cache_dir>/failures.json``; removed again by a run without failures)."""
    client, api_key = _client(cfg)
    cache = ReplyCache(cfg.cache_dir)
    logger.info(
        "LLM annotation: %d images, model %r at %s, %d in flight, API key %s, cache %s",
        len(items),
        cfg.model,
        client.url,
        cfg.concurrency,
        f"from ${cfg.api_key_env}" if api_key else "none",
        cache.directory,
    )
    worker = _Worker(cfg, client, cache)
    run = LlmRun(answers=[{} for _ in items])
    bar = tqdm(total=len(items), desc="LLM annotate", unit="img", disable=not progress)
    pool = cf.ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="llm")
    try:
        futures = {pool.submit(worker, item): i for i, item in enumerate(items)}
        for future in cf.as_completed(futures):
            _collect(run, items, futures[future], future)
            bar.update(1)
            bar.set_postfix(sent=run.sent, cached=run.cached, failed=len(run.failed), refresh=False)
    except LlmCircuitOpenError as err:
        raise LlmCircuitOpenError(
            f"LLM annotation stopped: {err}. {run.sent} answers sent in this run and "
            f"{run.cached} read from the cache are kept in {cache.directory}: a rerun sends only "
            "the rest. Check the server, or raise annotate.llm.max_consecutive_failures "
            "(0 = never stop)"
        ) from None
    finally:  # on a fatal HTTP status: drop the queue; in-flight successes still reach the cache
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    logger.info(
        "LLM annotation done: %d sent, %d from cache, %d failed, %d retries",
        run.sent,
        run.cached,
        len(run.failed),
        run.retries,
    )
    _report_failures(run, items, cache)
    return run


def llm_answerer(cfg: LlmConfig, *, progress: bool = True) -> Answerer:
    """The LLM backend as an :data:`~vmad_pipeline.annotation.riad.Answerer`."""

    def answer(items: Sequence[QaItem]) -> list[dict[str, str]]:
        return annotate_with_llm(items, cfg, progress=progress).answers

    return answer
