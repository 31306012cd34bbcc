"""The `api` judge: any OpenAI-compatible chat-completions endpoint (GPT-4o as MIS used, or a local vLLM server).

It sends the shared judge prompts of `verdicts.py` (with the request's images as PNG data URLs) and reads the
answers with the shared parsers, so its verdicts are comparable with the local-model judge's.

Failure policy, so that a broken endpoint can never look like a safe model:
- connection errors, timeouts, 408/409/425/429 and 5xx are retried with exponential backoff (+ jitter),
  honouring a (capped) `Retry-After` header;
- 400/401/403/404 mean the configuration is wrong (base_url, model, key): `VlsafeError` at once, no retries;
- an item whose retries run out, or whose response is malformed, gets the label `error` (a warning counts
  them) and the run goes on; a judge reply without a readable verdict is `unparseable`.
The API key is read from an environment variable and never written to logs, messages, reprs or `raw` texts.

Usage:
    with ApiJudge("https://api.openai.com/v1", "gpt-4o") as judge:          # key from $OPENAI_API_KEY
        verdicts = judge.judge_safety(items)
    ApiJudge("http://127.0.0.1:8000/v1", "meta-llama/Llama-Guard-3-11B-Vision", api_key_env=None)  # vLLM
"""

from __future__ import annotations

import base64
import email.utils
import io
import logging
import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import httpx
from PIL import Image
from tqdm.auto import tqdm

from vlsafe.errors import VlsafeError
from vlsafe.evaluation.judges.verdicts import (
    ERROR,
    UNPARSEABLE,
    PreferenceItem,
    SafetyItem,
    Verdict,
    answer_goes_first,
    parse_preference,
    parse_safety,
    preference_prompt,
    safety_prompt,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONFIG_ERROR_STATUSES = {400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "not found"}
_REDACTED = "***"
_SNIPPET_CHARS = 300


@dataclass(frozen=True)
class _Reply:
    """What one request came to: the judge's text, or the short reason it failed (then `text` is None)."""

    text: str | None
    error: str = ""


class _Retryable(Exception):
    """A transient failure worth another attempt; `wait` is the server's Retry-After, if it gave one."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


class _ItemFailed(Exception):
    """A failure specific to this item that another attempt would not fix (e.g. a malformed response)."""


def image_data_url(image: Any) -> str:
    """A PIL image (or an image file path) as a `data:image/png;base64,...` URL, as chat-completions expects."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            image = opened.copy()
    if not isinstance(image, Image.Image):
        raise VlsafeError(f"api judge: expected a PIL image or an image path, got {type(image).__name__}")
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        image = image.convert("RGB")  # modes PNG cannot hold (CMYK, YCbCr, F, ...)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` header (seconds or an HTTP date) in seconds from now, or None if absent/unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class ApiJudge:
    """Safety and preference judge backed by an OpenAI-compatible `/chat/completions` endpoint.

    Requests run concurrently on a thread pool of `concurrency`; results come back in input order. Use it as
    a context manager, or call `close()`, to release the HTTP connections.
    """

    name = "api"
    retry_after_cap_seconds: float = 60.0  # the longest a server's Retry-After may make one wait last
    backoff_cap_seconds: float = 60.0  # the longest one exponential-backoff wait may last
    show_progress: bool = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        send_images: bool = True,
        max_retries: int = 5,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = 60.0,
        concurrency: int = 4,
        max_tokens: int = 256,
    ) -> None:
        if (
            concurrency < 1
            or max_retries < 0
            or backoff_seconds < 0
            or timeout_seconds <= 0
            or max_tokens < 1
        ):
            raise VlsafeError(
                "api judge: need concurrency >= 1, max_retries >= 0, backoff_seconds >= 0, timeout_seconds > 0 "
                f"and max_tokens >= 1 (got {concurrency}, {max_retries}, {backoff_seconds}, {timeout_seconds}, "
                f"{max_tokens})"
            )
        base_url = base_url.rstrip("/")
        base_url = base_url.removesuffix("/chat/completions")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.send_images = send_images
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.url = f"{base_url}/chat/completions"

        headers = {"Content-Type": "application/json"}
        self._secret: str | None = None
        if api_key_env is not None:
            key = os.environ.get(api_key_env, "").strip()
            if not key:
                raise VlsafeError(
                    f"api judge: the environment variable {api_key_env} that should hold the API key is not set "
                    f"(or empty). Export it, or pass api_key_env=None for an endpoint without authentication "
                    f"(e.g. a local vLLM server)."
                )
            self._secret = key
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return (
            f"ApiJudge(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
            f"concurrency={self.concurrency}, max_retries={self.max_retries})"
        )

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._client.close()

    def __enter__(self) -> ApiJudge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public API ----------------------------------------------------------------------------------------

    def judge_safety(self, items: Sequence[SafetyItem]) -> list[Verdict]:
        """One verdict per item, in order: safe/unsafe (with the refusal flag when given), unparseable, or error."""
        replies = self._run([(safety_prompt(item), item.images) for item in items], desc="api judge (safety)")
        verdicts = [
            parse_safety(reply.text) if reply.text is not None else Verdict(ERROR, None, reply.error)
            for reply in replies
        ]
        self._report([v.label for v in verdicts], "safety")
        return verdicts

    def judge_preference(self, items: Sequence[PreferenceItem]) -> list[str]:
        """win/lose/tie for the model's answer against the reference, or unparseable/error; in input order.

        The model's answer takes slot A or B by `answer_goes_first(sample_id)`, cancelling position bias."""
        slots = [answer_goes_first(item.sample_id) for item in items]
        requests = [
            (preference_prompt(item, first), item.images) for item, first in zip(items, slots, strict=True)
        ]
        replies = self._run(requests, desc="api judge (preference)")
        labels = [
            parse_preference(reply.text, first) if reply.text is not None else ERROR
            for reply, first in zip(replies, slots, strict=True)
        ]
        self._report(labels, "preference")
        return labels

    # -- internals -----------------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        """`text` with the API key (if any) blanked out."""
        return text.replace(self._secret, _REDACTED) if self._secret else text

    def _report(self, labels: list[str], kind: str) -> None:
        """Log the outcome; failures and unreadable replies get a warning with their counts."""
        counts = Counter(labels)
        if counts[ERROR]:
            logger.warning(
                "api judge (%s): %d of %d items got the label 'error' (endpoint failed after %d retries or gave "
                "a malformed response); they are counted apart, never as safe.",
                kind,
                counts[ERROR],
                len(labels),
                self.max_retries,
            )
        if counts[UNPARSEABLE]:
            logger.warning(
                "api judge (%s): %d of %d replies had no readable verdict ('unparseable').",
                kind,
                counts[UNPARSEABLE],
                len(labels),
            )
        logger.info("api judge (%s) on %s: %s", kind, self.model, dict(counts))

    def _run(self, requests: list[tuple[str, tuple]], desc: str) -> list[_Reply]:
        """Send all requests on the thread pool; replies in input order. A configuration error stops the rest."""
        if not requests:
            return []
        self._stop.clear()
        bar = tqdm(total=len(requests), desc=desc, disable=not self.show_progress or len(requests) < 2)
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="vlsafe-api-judge")
        try:
            futures = [
                pool.submit(self._counted(bar, self._ask), prompt, images) for prompt, images in requests
            ]
            return [future.result() for future in futures]
        except BaseException:
            self._stop.set()  # in-flight workers stop retrying; queued ones are cancelled below
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()

    @staticmethod
    def _counted(bar: tqdm, function: Callable[..., T]) -> Callable[..., T]:
        def wrapped(*args: Any) -> T:
            try:
                return function(*args)
            finally:
                bar.update(1)

        return wrapped

    def _payload(self, prompt: str, images: tuple) -> dict[str, Any]:
        """The chat-completions request body: one user turn with the prompt text and (optionally) the images."""
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        if self.send_images:
            content += [
                {"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in images
            ]
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }

    def _ask(self, prompt: str, images: tuple) -> _Reply:
        """One item: send, retrying transient failures with backoff; the judge's text or a short failure reason."""
        if self._stop.is_set():
            return _Reply(None, "aborted")
        payload = self._payload(prompt, images)
        attempts = self.max_retries + 1
        reason = ""
        for attempt in range(attempts):
            try:
                return _Reply(self._redact(self._post(payload)))
            except _ItemFailed as failure:
                return _Reply(None, self._redact(str(failure)))
            except VlsafeError:
                self._stop.set()  # a configuration error: the other workers stop before their next request
                raise
            except _Retryable as failure:
                reason = self._redact(failure.reason)
                if attempt + 1 == attempts:
                    break
                delay = self._delay(attempt, failure.wait)
                logger.debug(
                    "api judge: %s (attempt %d of %d); retrying in %.2fs",
                    reason,
                    attempt + 1,
                    attempts,
                    delay,
                )
                if self._stop.wait(delay):
                    return _Reply(None, "aborted")
        return _Reply(None, f"{reason} (gave up after {attempts} attempts)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before the next attempt: the server's Retry-After (capped), else exponential backoff + jitter."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap_seconds)
        backoff = min(self.backoff_seconds * 2**attempt, self.backoff_cap_seconds)
        return backoff * (1 + 0.1 * random.random())

    def _post(self, payload: dict[str, Any]) -> str:
        """One HTTP attempt; the judge's text, or `_Retryable` / `_ItemFailed` / `VlsafeError`."""
        try:
            response = self._client.post(self.url, json=payload)
        except httpx.TimeoutException as error:
            raise _Retryable(f"timeout after {self.timeout_seconds}s ({type(error).__name__})") from None
        except httpx.TransportError as error:
            raise _Retryable(f"connection error ({type(error).__name__}: {error})") from None
        status = response.status_code
        if status in CONFIG_ERROR_STATUSES:
            raise VlsafeError(
                f"api judge: {self.url} answered HTTP {status} ({CONFIG_ERROR_STATUSES[status]}): "
                f"{self._snippet(response)}\nCheck that base_url points at an OpenAI-compatible API (ending in /v1), "
                f"that the model {self.model!r} is served there, and "
                + (
                    f"that the environment variable {self.api_key_env} holds a valid key."
                    if self.api_key_env
                    else "whether the endpoint needs a key (set api_key_env to the variable that holds it)."
                )
            )
        if status == 429 or status in (408, 409, 425) or status >= 500:
            raise _Retryable(
                f"HTTP {status}: {self._snippet(response)}",
                _retry_after_seconds(response.headers.get("Retry-After")),
            )
        if status != 200:
            raise _ItemFailed(f"HTTP {status}: {self._snippet(response)}")
        try:
            message = response.json()["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _ItemFailed(
                f"malformed response (no choices[0].message): {self._snippet(response)}"
            ) from None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # some servers return content parts
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        refusal = message.get("refusal") if isinstance(message, dict) else None
        return refusal if isinstance(refusal, str) else ""  # no verdict in it: parsed as unparseable

    def _snippet(self, response: httpx.Response) -> str:
        """The start of a response body, one line, key removed: enough to see what the server said."""
        text = " ".join(response.text.split())
        if len(text) > _SNIPPET_CHARS:
            text = text[:_SNIPPET_CHARS] + "..."
        return self._redact(text) or "(empty body)"
