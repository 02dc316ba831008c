"""Parameters of the annotate pipeline (``conf/base/parameters_annotate.yml``), validated.

``AnnotateConfig`` mirrors the ``annotate`` block; ``LlmConfig`` its ``llm`` sub-block, used only
when ``backend: llm``. The defaults here equal ``conf/base``, so a ``conf/local`` file that
replaces the whole ``annotate`` block (Kedro's default merge) only needs the keys it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmad_pipeline.configs.base import check, from_dict

__all__ = ["BACKENDS", "AnnotateConfig", "LlmConfig", "parse_annotate_params"]

BACKENDS = ("template", "llm")


@dataclass(frozen=True)
class LlmConfig:
    base_url: str = "http://localhost:8000/v1"  # POST {base_url}/chat/completions
    model: str = ""  # the served model name (vLLM --served-model-name, Ollama tag, hosted id)
    api_key_env: str = "VMAD_LLM_API_KEY"  # NAME of the key's env var; unset: no auth header
    temperature: float = 0.2
    max_tokens: int = 800  # generation budget for the JSON with the three answers
    timeout_s: float = 120.0  # deadline of one HTTP request: connect + headers + whole body
    concurrency: int = 4  # requests in flight at once (thread pool size)
    max_retries: int = 4  # per image, on timeouts, connection errors, HTTP 429 and 5xx
    # stop the run after this many failed requests in a row, whatever the image (a server that
    # is down or drips its replies); 0 = never stop
    max_consecutive_failures: int = 8
    invalid_reply_retries: int = 1  # per image, extra requests after a malformed reply
    backoff_s: float = 1.0  # first retry delay; doubles per retry, with jitter
    max_backoff_s: float = 60.0  # cap on one delay (also on a server's Retry-After)
    json_mode: bool = False  # send response_format {"type": "json_object"} (OpenAI, vLLM, Ollama)
    max_image_side: int = 1024  # longer side of the image sent (downscaled above it); 0 = as is
    max_answer_chars: int = 2000  # a longer answer is a malformed reply
    max_reply_bytes: int = 4_194_304  # a larger reply body (4 MiB) fails its image, unread
    cache_dir: str = "data/02_intermediate/llm_cache"  # replies, one JSON file per request key

    def __post_init__(self) -> None:
        check(
            self.base_url.startswith(("http://", "https://")),
            "base_url",
            f"must start with http:// or https://, got {self.base_url!r}",
        )
        check(0.0 <= self.temperature <= 2.0, "temperature", "must be in [0, 2]")
        check(self.max_tokens >= 16, "max_tokens", "must be >= 16")
        check(self.timeout_s > 0, "timeout_s", "must be > 0")
        check(self.concurrency >= 1, "concurrency", "must be >= 1")
        check(self.max_retries >= 0, "max_retries", "must be >= 0")
        check(self.max_consecutive_failures >= 0, "max_consecutive_failures", "must be >= 0")
        check(self.invalid_reply_retries >= 0, "invalid_reply_retries", "must be >= 0")
        check(self.backoff_s >= 0, "backoff_s", "must be >= 0")
        check(self.max_backoff_s >= self.backoff_s, "max_backoff_s", "must be >= backoff_s")
        check(
            self.max_image_side == 0 or self.max_image_side >= 32,
            "max_image_side",
            "must be 0 (send as is) or >= 32",
        )
        check(self.max_answer_chars >= 20, "max_answer_chars", "must be >= 20")
        check(self.max_reply_bytes >= 1024, "max_reply_bytes", "must be >= 1024")
        check(bool(self.cache_dir.strip()), "cache_dir", "must not be empty")
        check(
            self.api_key_env == "" or self.api_key_env.replace("_", "").isalnum(),
            "api_key_env",
            "must be the NAME of an environment variable (letters, digits, _), not the key itself",
        )


@dataclass(frozen=True)
class AnnotateConfig:
    backend: str = "template"  # one of BACKENDS
    seed: int = 0  # template backend: phrasing choice per image
    progress: bool = True
    llm: LlmConfig = field(default_factory=LlmConfig)

    def __post_init__(self) -> None:
        check(
            self.backend in BACKENDS,
            "backend",
            f"unknown backend {self.backend!r}; known: {', '.join(BACKENDS)}",
        )
        if self.backend == "llm":
            check(
                bool(self.llm.model.strip()),
                "llm.model",
                "empty; set the served model name in conf/local/parameters_annotate.yml",
            )


def parse_annotate_params(params: dict[str, Any] | None) -> AnnotateConfig:
    """``params:annotate`` -> :class:`AnnotateConfig`; unknown keys and bad values name the key."""
    return from_dict(AnnotateConfig, params, "annotate")
