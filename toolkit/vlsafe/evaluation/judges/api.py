"""The `api` judge: any OpenAI-compatible chat-completions endpoint (GPT-4o as MIS used, or a local vLLM server).

It sends the shared judge prompts of `verdicts.py` (with the request's images as PNG data URLs) through the
`openai` client and reads the answers with the shared parsers, so its verdicts are comparable with the
local-model judge's.

Failure policy, so that a broken endpoint can never look like a safe model:
- the `openai` client retries connection errors, timeouts, 408/409/429 and 5xx (`max_retries` times) with its
  exponential backoff (0.5 s doubling, at most 8 s, minus up to 25% jitter), or waits as long as the server's
  `Retry-After` / `retry-after-ms` says when that is at most 2 minutes (a longer one is not retried);
- 400/401/403/404 mean the configuration is wrong (base_url, model, key): `VlsafeError` at once, no retries,
  and the other workers send nothing more;
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
import io
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import openai
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
# openai.OpenAI refuses to start without some key; for an endpoint without authentication it gets this one,
# and every request omits the Authorization header (openai.Omit), so it never leaves the process.
_NO_KEY = "unused-endpoint-without-authentication"


@dataclass(frozen=True)
class _Reply:
    """What one request came to: the judge's text, or the short reason it failed (then `text` is None)."""

    text: str | None
    error: str = ""


class _ItemFailed(Exception):
    """A failure specific to this item that another attempt would not fix (e.g. a malformed response)."""


class _Aborted(Exception):
    """Another worker met a configuration error: this one sends no further request."""


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


class ApiJudge:
    """Safety and preference judge backed by an OpenAI-compatible `/chat/completions` endpoint.

    Requests run concurrently on a thread pool of `concurrency`; results come back in input order. Retries,
    backoff and `Retry-After` are the `openai` client's (`max_retries`, `timeout_seconds` per attempt). Use it
    as a context manager, or call `close()`, to release the HTTP connections.
    """

    name = "api"
    distributed = False  # concurrent HTTP requests from the main process
    reports_refusal = True  # vlsafe's JSON verdict says whether the answer refused
    compares_answers = True  # and it is asked the pairwise prompt for the win rate
    show_progress: bool = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        send_images: bool = True,
        max_retries: int = 5,
        timeout_seconds: float = 60.0,
        concurrency: int = 4,
        max_tokens: int = 256,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or timeout_seconds <= 0 or max_tokens < 1:
            raise VlsafeError(
                "api judge: need concurrency >= 1, max_retries >= 0, timeout_seconds > 0 and max_tokens >= 1 "
                f"(got {concurrency}, {max_retries}, {timeout_seconds}, {max_tokens})"
            )
        base_url = base_url.rstrip("/").removesuffix("/chat/completions")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.send_images = send_images
        self.max_retries = max_retries
        self.timeout_seconds = timeout_seconds
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.url = f"{base_url}/chat/completions"

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
        # No key: drop the Authorization header from every request rather than send a dummy bearer token.
        self._extra_headers: dict[str, Any] = {} if self._secret else {"Authorization": openai.Omit()}
        self._stop = threading.Event()
        self._client = openai.OpenAI(
            api_key=self._secret or _NO_KEY,
            base_url=base_url,
            max_retries=max_retries,
            timeout=timeout_seconds,
            # The request hook runs before every attempt, retries included: after a configuration error
            # the other workers stop there instead of sending on.
            http_client=openai.DefaultHttpxClient(event_hooks={"request": [self._before_send]}),
        )

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
                "api judge (%s): %d of %d items got the label 'error' (endpoint failed after up to %d retries "
                "or gave a malformed response); they are counted apart, never as safe.",
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
        """Send all requests on the thread pool; replies in input order. A configuration error stops the rest.

        On an error the pool is drained before raising (no worker outlives the call); a worker inside one of
        openai's retry waits finishes that wait, then stops at the request hook without sending."""
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
            self._stop.set()  # in-flight workers send nothing more; queued ones are cancelled below
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

    def _before_send(self, request: Any) -> None:
        """httpx request hook, run before each attempt: refuse to send once a configuration error stopped the run."""
        if self._stop.is_set():
            raise _Aborted

    def _messages(self, prompt: str, images: tuple) -> list[dict[str, Any]]:
        """One user turn with the prompt text and (optionally) the images."""
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        if self.send_images:
            content += [
                {"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in images
            ]
        return [{"role": "user", "content": content}]

    def _ask(self, prompt: str, images: tuple) -> _Reply:
        """One item through the openai client (which retries): the judge's text or a short failure reason."""
        if self._stop.is_set():
            return _Reply(None, "aborted")
        messages = self._messages(prompt, images)
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=self.model,
                messages=messages,
                temperature=0,
                max_tokens=self.max_tokens,
                extra_headers=self._extra_headers,
            )
            return _Reply(self._redact(self._reply_text(raw.status_code, raw.text)))
        except _Aborted:
            return _Reply(None, "aborted")
        except _ItemFailed as failure:
            return _Reply(None, self._redact(str(failure)))
        except openai.APIStatusError as error:
            if error.status_code in CONFIG_ERROR_STATUSES:
                self._stop.set()  # the other workers stop before their next attempt
                raise self._configuration_error(error.status_code, error.response.text) from None
            return self._failed(f"HTTP {error.status_code}: {self._snippet(error.response.text)}", error)
        except openai.APITimeoutError as error:  # before APIConnectionError: it is a subclass
            return self._failed(f"timeout after {self.timeout_seconds}s", error)
        except openai.APIConnectionError as error:
            cause = error.__cause__ or error
            return self._failed(f"connection error ({type(cause).__name__}: {cause})", error)

    def _failed(self, reason: str, error: openai.APIError) -> _Reply:
        """An item the openai client gave up on: the reason and how many attempts it made, key removed."""
        return _Reply(None, self._redact(f"{reason} ({_attempts(error)})"))

    def _reply_text(self, status: int, body: str) -> str:
        """The judge's text from a chat-completions body; `_ItemFailed` if there is none to be had."""
        if status != 200:
            raise _ItemFailed(f"HTTP {status}: {self._snippet(body)}")
        try:
            message = json.loads(body)["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _ItemFailed(f"malformed response (no choices[0].message): {self._snippet(body)}") from None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # some servers return content parts
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        refusal = message.get("refusal") if isinstance(message, dict) else None
        return refusal if isinstance(refusal, str) else ""  # no verdict in it: parsed as unparseable

    def _configuration_error(self, status: int, body: str) -> VlsafeError:
        """The error for a 400/401/403/404: the URL, the status, what the server said, and what to check."""
        return VlsafeError(
            f"api judge: {self.url} answered HTTP {status} ({CONFIG_ERROR_STATUSES[status]}): "
            f"{self._snippet(body)}\nCheck that base_url points at an OpenAI-compatible API (ending in /v1), "
            f"that the model {self.model!r} is served there, and "
            + (
                f"that the environment variable {self.api_key_env} holds a valid key."
                if self.api_key_env
                else "whether the endpoint needs a key (set api_key_env to the variable that holds it)."
            )
        )

    def _snippet(self, body: str) -> str:
        """The start of a response body, one line, key removed: enough to see what the server said."""
        text = " ".join(body.split())
        if len(text) > _SNIPPET_CHARS:
            text = text[:_SNIPPET_CHARS] + "..."
        return self._redact(text) or "(empty body)"


def _attempts(error: openai.APIError) -> str:
    """How many attempts the openai client made, from the retry counter it puts on each request it sends."""
    retries = error.request.headers.get("x-stainless-retry-count", "") if error.request is not None else ""
    if not retries.isdigit():
        return "gave up"
    attempts = int(retries) + 1
    return f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}"
