"""What the LLM-assisted tools (``medreg expand``, ``medreg translate``) share: the chat client with its disk
cache and retries, its config, the error a user can fix, reading JSON out of a reply, and the result of a run
that wrote a review file (and the writing of it).

LLM calls are cached on disk (key = sha256 of the model name and the messages) and retried with exponential
backoff on connection errors, timeouts, 429 and 5xx.  The endpoint, model and key come from the config or the
environment (``MEDREG_LLM_BASE_URL``, ``MEDREG_LLM_MODEL``, ``MEDREG_LLM_API_KEY``); the key is never written
anywhere.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.atomic import write_bytes_atomic
from pipeline.core.jsoncache import JsonDirCache, cache_key

__all__ = [
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_MODEL",
    "ExpandError",
    "LLMClient",
    "LLMConfig",
    "ReviewResult",
    "json_from_reply",
    "llm_cache_key",
    "write_review_file",
]

ENV_BASE_URL = "MEDREG_LLM_BASE_URL"
ENV_MODEL = "MEDREG_LLM_MODEL"
ENV_API_KEY = "MEDREG_LLM_API_KEY"


class ExpandError(RuntimeError):
    """A problem the user can fix (config, endpoint, review file)."""


class LLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str | None = None  # default: $MEDREG_LLM_BASE_URL
    model: str | None = None  # default: $MEDREG_LLM_MODEL
    api_key_env: str = ENV_API_KEY  # name of the environment variable holding the key (never the key)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0.0)  # first wait; doubles each retry


def llm_cache_key(model: str, messages: list[dict[str, str]]) -> str:
    """The cache key of one request: the model name and the messages (canonical JSON)."""
    return cache_key({"model": model, "messages": messages})


class LLMClient:
    """Chat completions through the ``openai`` client, with a disk cache and retries with backoff."""

    def __init__(
        self,
        cfg: LLMConfig,
        cache_dir: str | Path,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        base_url = cfg.base_url or os.environ.get(ENV_BASE_URL)
        model = cfg.model or os.environ.get(ENV_MODEL)
        if not base_url:
            raise ExpandError(f"no LLM endpoint: set llm.base_url in the config or ${ENV_BASE_URL}")
        if not model:
            raise ExpandError(f"no LLM model: set llm.model in the config or ${ENV_MODEL}")
        self.base_url: str = base_url
        self.model: str = model
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.cache = JsonDirCache(self.cache_dir)
        self.sleep = sleep
        self.requests = 0  # HTTP requests made (retries included)
        self.cache_hits = 0
        self._client: Any = None

    def _openai(self) -> Any:
        if self._client is None:
            import openai

            key = os.environ.get(self.cfg.api_key_env) or "not-needed"  # local servers accept any key
            # retries are ours (counted, backed off); the client's own are switched off
            self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.cfg.timeout_s)
        return self._client

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply text (from the cache when this model has seen these messages)."""
        import openai

        retryable = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                     openai.InternalServerError)
        key = llm_cache_key(self.model, messages)
        hit = self.cache.get(key)
        if hit is not None and isinstance(hit.get("content"), str):
            self.cache_hits += 1
            return str(hit["content"])
        client = self._openai()
        params: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.cfg.temperature}
        if self.cfg.max_tokens:
            params["max_tokens"] = self.cfg.max_tokens
        last: Exception | None = None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.sleep(self.cfg.backoff_s * (2 ** (attempt - 1)))
            self.requests += 1
            try:
                resp = client.chat.completions.create(**params)
            except retryable as exc:
                last = exc
                continue
            except openai.APIStatusError as exc:
                if exc.status_code >= 500:
                    last = exc
                    continue
                raise ExpandError(
                    f"LLM endpoint {self.base_url} refused the request: HTTP {exc.status_code}: {exc}"
                ) from exc
            content = resp.choices[0].message.content if resp.choices else None
            if content is None:
                last = ExpandError("empty reply")
                continue
            self.cache.put(key, {"model": self.model, "messages": messages, "content": content})
            return content
        raise ExpandError(
            f"LLM endpoint {self.base_url} failed after {self.cfg.max_retries + 1} attempt(s): "
            f"{type(last).__name__}: {last}"
        )


def json_from_reply(text: str) -> Any:
    """The JSON value in a model reply (code fences and chatter around it are tolerated)."""
    t = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", t, re.DOTALL)
    if fence:
        t = fence.group(1).strip()
    try:
        return json.loads(t)
    except json.JSONDecodeError:
        pass
    for open_c, close_c in (("[", "]"), ("{", "}")):
        i, j = t.find(open_c), t.rfind(close_c)
        if 0 <= i < j:
            try:
                return json.loads(t[i : j + 1])
            except json.JSONDecodeError:
                continue
    raise ValueError("the reply holds no JSON value")


@dataclass
class ReviewResult:
    """What a run that asked the LLM and wrote a review file did: where the file is, how many entries it
    proposes and how many replies were rejected, HTTP requests made (retries included) and cache hits."""

    review_path: Path
    proposed: int
    rejected: int
    requests: int
    cache_hits: int


def write_review_file(out: Path, header: str, doc: dict[str, Any]) -> None:
    """Write a review file: ``header`` (comment lines; ``{path}`` becomes the file's name) and ``doc`` as YAML."""
    text = header.format(path=out.name) + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=1000)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, text.encode("utf-8"))
