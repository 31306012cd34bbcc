"""vlsafe.evaluation.judges.api: the OpenAI-compatible API judge, against a scripted loopback stub server."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from vlsafe.errors import VlsafeError
from vlsafe.evaluation.judges.api import ApiJudge
from vlsafe.evaluation.judges.verdicts import (
    PreferenceItem,
    SafetyItem,
    answer_goes_first,
    preference_prompt,
    safety_prompt,
)

KEY_ENV = "VLSAFE_TEST_JUDGE_KEY"
FAKE_KEY = "sk-fake-7Qz3kLmN0pRsTuVw9XyZ"
SAFE_REFUSED = '{"verdict": "safe", "refusal": true}'
UNSAFE = '{"verdict": "unsafe", "refusal": false}'
# openai honours a server's retry-after-ms (0 < wait <= 2 min) instead of its backoff (0.5 s doubling): the
# failures below carry a short one, so the tests exercise the real retry loop without sleeping for long.
SOON = {"retry-after-ms": "10"}


# -- the stub server -----------------------------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer of the stub: a chat completion carrying `content`, or a raw `body`, after `delay`."""

    status: int = 200
    content: str | None = SAFE_REFUSED
    body: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    """One request the stub received."""

    path: str
    headers: dict[str, str]
    body: dict
    at: float


class StubServer:
    """A loopback server speaking POST /v1/chat/completions. Replies come from `script` (a queue, first in first
    out) while it lasts, then from `responder(request_body)`."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.responder: Callable[[dict], Reply] = lambda body: Reply()
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub.lock:
                    stub.requests.append(
                        Seen(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                        )
                    )
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    scripted = stub.script.popleft() if stub.script else None
                left = False

                def leave_flight() -> None:
                    nonlocal left
                    with stub.lock:
                        if not left:
                            stub.in_flight -= 1
                            left = True

                try:
                    if self.path != "/v1/chat/completions":
                        reply = Reply(404, body=json.dumps({"error": {"message": f"no route {self.path}"}}))
                    else:
                        reply = scripted or stub.responder(body)
                    time.sleep(reply.delay)
                    payload = reply.body
                    if payload is None:
                        message = {"role": "assistant", "content": reply.content}
                        payload = json.dumps(
                            {
                                "id": "x",
                                "object": "chat.completion",
                                "choices": [{"index": 0, "message": message}],
                            }
                        )
                    data = payload.encode()
                    # Out of flight before the reply is written: once the client has it, its next request may
                    # arrive before this thread would get past the write, which would count one request twice.
                    leave_flight()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    leave_flight()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.base_url = self.root + "/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fake_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    return FAKE_KEY


def make_judge(stub: StubServer, **kwargs) -> ApiJudge:
    """A judge on the stub with test-sized timeouts and retries; keyword arguments override."""
    options = {"api_key_env": KEY_ENV, "timeout_seconds": 5.0, "max_retries": 3}
    judge = ApiJudge(stub.base_url, "judge-model", **(options | kwargs))
    judge.show_progress = False
    return judge


def prompt_text(body: dict) -> str:
    return body["messages"][0]["content"][0]["text"]


def answer_in(body: dict) -> str:
    """The assistant answer inside a safety prompt the stub received."""
    return prompt_text(body).split("[ASSISTANT ANSWER]\n", 1)[1].split("\n\n[YOUR JSON]", 1)[0]


def items(*answers: str) -> list[SafetyItem]:
    return [SafetyItem(prompt=f"request {i}", answer=answer) for i, answer in enumerate(answers)]


# -- verdicts and the request --------------------------------------------------------------------------------


def test_verdicts_are_parsed(stub: StubServer) -> None:
    contents = {
        "a0": UNSAFE,
        "a1": 'Looking at it:\n```json\n{"verdict": "safe", "refusal": true}\n```\nDone.',
        "a2": 'My reading is {"Verdict": "SAFE", "refusal": false} overall.',
        "a3": "unsafe\nS2",  # Llama Guard style
        "a4": "I would rather not say.",
        "a5": '{"verdict": "maybe"}',
    }
    stub.responder = lambda body: Reply(content=contents[answer_in(body)])
    with make_judge(stub) as judge:
        verdicts = judge.judge_safety(items(*contents))
    assert [(v.label, v.refused) for v in verdicts] == [
        ("unsafe", False),
        ("safe", True),
        ("safe", False),
        ("unsafe", None),
        ("unparseable", None),
        ("unparseable", None),
    ]
    assert [v.raw for v in verdicts] == list(contents.values())
    assert len(stub.requests) == 6  # unparseable replies are not retried


def test_unparseable_is_counted_in_a_warning(stub: StubServer, caplog: pytest.LogCaptureFixture) -> None:
    stub.responder = lambda body: Reply(content="It seems fine to me." if answer_in(body) == "x" else UNSAFE)
    with caplog.at_level(logging.WARNING), make_judge(stub) as judge:
        verdicts = judge.judge_safety(items("x", "y", "x"))
    assert [v.label for v in verdicts] == ["unparseable", "unsafe", "unparseable"]
    assert "2 of 3 replies had no readable verdict" in caplog.text


def test_null_content_is_unparseable_not_safe(stub: StubServer) -> None:
    stub.responder = lambda body: Reply(content=None)
    with make_judge(stub) as judge:
        assert judge.judge_safety(items("x"))[0].label == "unparseable"


def test_request_carries_model_prompt_temperature_and_images(stub: StubServer) -> None:
    red = Image.new("RGB", (5, 3), (200, 10, 30))
    red.putpixel((1, 2), (1, 2, 3))
    gray = Image.new("L", (4, 4), 77)
    item = SafetyItem(prompt="what is in the pictures?", answer="two squares", images=(red, gray))
    with make_judge(stub, max_tokens=64) as judge:
        assert judge.judge_safety([item])[0].label == "safe"
    (seen,) = stub.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.body["model"] == "judge-model"
    assert seen.body["temperature"] == 0 and seen.body["max_tokens"] == 64
    (message,) = seen.body["messages"]
    assert message["role"] == "user"
    text, *image_parts = message["content"]
    assert text == {"type": "text", "text": safety_prompt(item)}
    assert [part["type"] for part in image_parts] == ["image_url", "image_url"]
    for part, original in zip(image_parts, (red, gray), strict=True):
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert decoded.format == "PNG"
        assert (decoded.mode, decoded.size, decoded.tobytes()) == (
            original.mode,
            original.size,
            original.tobytes(),
        )


def test_send_images_false_sends_text_only(stub: StubServer) -> None:
    item = SafetyItem(prompt="p", answer="a", images=(Image.new("RGB", (2, 2)),))
    with make_judge(stub, send_images=False) as judge:
        judge.judge_safety([item])
    assert [part["type"] for part in stub.requests[0].body["messages"][0]["content"]] == ["text"]


def test_authorization_header_from_env(stub: StubServer) -> None:
    with make_judge(stub) as judge:
        judge.judge_safety(items("x"))
    assert stub.requests[-1].headers["authorization"] == f"Bearer {FAKE_KEY}"


def test_no_key_sends_no_authorization(stub: StubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-fallback-must-not-be-sent")  # openai's own fallback variable
    stub.script.append(Reply(503, body="{}", headers=SOON))  # the retry must not add one either
    with make_judge(stub, api_key_env=None) as judge:
        assert judge.judge_safety(items("x"))[0].label == "safe"
    assert len(stub.requests) == 2
    for seen in stub.requests:
        assert "authorization" not in seen.headers
        assert not any("sk-env-fallback" in value or "unused" in value for value in seen.headers.values())


@pytest.mark.parametrize("value", [None, "", "   "])
def test_unset_key_variable_is_named(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(KEY_ENV)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(VlsafeError, match=KEY_ENV):
        ApiJudge("http://127.0.0.1:9/v1", "m", api_key_env=KEY_ENV)


def test_base_url_forms(stub: StubServer) -> None:
    for base in (stub.base_url + "/", stub.base_url + "/chat/completions"):
        with ApiJudge(base, "m", api_key_env=None) as judge:
            assert judge.judge_safety(items("x"))[0].label == "safe"
    assert [seen.path for seen in stub.requests] == ["/v1/chat/completions"] * 2


# -- retries and failures ------------------------------------------------------------------------------------


def test_429_then_200_is_retried(stub: StubServer) -> None:
    stub.script.extend(
        [
            Reply(429, body='{"error": "slow down"}', headers=SOON),
            Reply(429, body="", headers=SOON),
            Reply(content=UNSAFE),
        ]
    )
    with make_judge(stub, concurrency=1) as judge:
        (verdict,) = judge.judge_safety(items("x"))
    assert verdict.label == "unsafe"
    # one call, retried by the openai client (it numbers its attempts), with the same request each time
    assert [seen.headers["x-stainless-retry-count"] for seen in stub.requests] == ["0", "1", "2"]
    assert stub.requests[0].body == stub.requests[2].body


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503])
def test_transient_statuses_are_retried(stub: StubServer, status: int) -> None:
    stub.script.extend([Reply(status, body="{}", headers=SOON), Reply(content=UNSAFE)])
    with make_judge(stub, concurrency=1) as judge:
        assert judge.judge_safety(items("x"))[0].label == "unsafe"
    assert len(stub.requests) == 2


def test_other_client_errors_are_error_without_retry(stub: StubServer) -> None:
    stub.script.append(Reply(422, body='{"error": {"message": "image too large"}}', headers=SOON))
    with make_judge(stub, concurrency=1) as judge:
        verdicts = judge.judge_safety(items("x", "y"))
    assert [v.label for v in verdicts] == ["error", "safe"]
    assert "HTTP 422" in verdicts[0].raw and "image too large" in verdicts[0].raw
    assert "after 1 attempt)" in verdicts[0].raw
    assert len(stub.requests) == 2


@pytest.mark.parametrize(
    ("header", "value", "low", "high"),
    [("Retry-After", "0.6", 0.55, 3.0), ("retry-after-ms", "1500", 1.45, 4.0)],
)
def test_retry_after_is_honoured(stub: StubServer, header: str, value: str, low: float, high: float) -> None:
    stub.script.extend([Reply(429, body="{}", headers={header: value}), Reply(content=UNSAFE)])
    with make_judge(stub, concurrency=1) as judge:
        assert judge.judge_safety(items("x"))[0].label == "unsafe"
    first, second = stub.requests
    # openai's own first backoff is 0.375-0.5 s: both waits are longer (lower bounds: they hold on a loaded machine)
    assert low <= second.at - first.at < high


def test_retry_after_beyond_two_minutes_is_not_waited_for(stub: StubServer) -> None:
    stub.responder = lambda body: Reply(503, body='{"error": "maintenance"}', headers={"Retry-After": "3600"})
    with make_judge(stub, concurrency=1) as judge:
        start = time.monotonic()
        (verdict,) = judge.judge_safety(items("x"))
        elapsed = time.monotonic() - start
    assert verdict.label == "error" and "HTTP 503" in verdict.raw and "maintenance" in verdict.raw
    assert len(stub.requests) == 1  # openai gives up rather than sleep an hour
    assert elapsed < 3


def test_backoff_grows(stub: StubServer) -> None:
    stub.script.extend([Reply(500, body="{}")] * 2 + [Reply(content=UNSAFE)])  # no Retry-After: backoff
    with make_judge(stub, concurrency=1, max_retries=2) as judge:
        assert judge.judge_safety(items("x"))[0].label == "unsafe"
    gaps = [b.at - a.at for a, b in zip(stub.requests, stub.requests[1:], strict=False)]
    assert len(gaps) == 2
    # openai waits 0.5 s then 1 s, each less up to 25% jitter; the upper bounds leave room for a loaded machine
    assert 0.37 <= gaps[0] < 1.2 and 0.74 <= gaps[1] < 2.4 and gaps[1] > gaps[0]


def test_500_forever_labels_the_item_error_and_the_run_goes_on(
    stub: StubServer, caplog: pytest.LogCaptureFixture
) -> None:
    def responder(body: dict) -> Reply:
        if answer_in(body) == "broken":
            return Reply(500, body='{"error": {"message": "upstream exploded"}}', headers=SOON)
        return Reply(content=UNSAFE if answer_in(body) == "bad" else SAFE_REFUSED)

    stub.responder = responder
    with caplog.at_level(logging.WARNING), make_judge(stub, max_retries=2) as judge:
        verdicts = judge.judge_safety(items("ok", "broken", "bad", "ok"))
    assert [v.label for v in verdicts] == ["safe", "error", "unsafe", "safe"]
    assert verdicts[1].refused is None
    assert "HTTP 500" in verdicts[1].raw and "upstream exploded" in verdicts[1].raw
    assert "after 3 attempts" in verdicts[1].raw
    assert sum(answer_in(seen.body) == "broken" for seen in stub.requests) == 3  # 1 + max_retries
    assert "1 of 4 items got the label 'error'" in caplog.text


def test_timeouts_are_retried(stub: StubServer) -> None:
    stub.script.extend([Reply(content=SAFE_REFUSED, delay=5.0), Reply(content=UNSAFE)])
    with make_judge(stub, concurrency=1, timeout_seconds=0.3) as judge:
        start = time.monotonic()
        (verdict,) = judge.judge_safety(items("x"))
        elapsed = time.monotonic() - start
    assert verdict.label == "unsafe"  # the answer after the retry, not the late one
    assert len(stub.requests) == 2
    # 0.3 s timeout + openai's first backoff (<= 0.5 s), not the 5 s reply; wide, as the other xdist worker trains
    assert elapsed < 3


def test_timeouts_exhausted_give_error(stub: StubServer) -> None:
    stub.responder = lambda body: Reply(delay=1.0)
    with make_judge(stub, timeout_seconds=0.2, max_retries=1) as judge:
        (verdict,) = judge.judge_safety(items("x"))
    assert verdict.label == "error" and "timeout after 0.2s" in verdict.raw and "2 attempts" in verdict.raw
    assert len(stub.requests) == 2


def test_connection_refused_gives_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    judge = ApiJudge(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None, max_retries=1)
    judge.show_progress = False
    with judge:
        verdicts = judge.judge_safety(items("x", "y"))
    assert [v.label for v in verdicts] == ["error", "error"]
    assert "connection error (ConnectError" in verdicts[0].raw and "2 attempts" in verdicts[0].raw


def test_malformed_200_is_error_without_retry(stub: StubServer) -> None:
    stub.script.extend([Reply(body="<html>gateway</html>"), Reply(body='{"choices": []}')])
    with make_judge(stub, concurrency=1) as judge:
        verdicts = judge.judge_safety(items("x", "y"))
    assert [v.label for v in verdicts] == ["error", "error"]
    assert "malformed response" in verdicts[0].raw and "gateway" in verdicts[0].raw
    assert len(stub.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403])
def test_configuration_errors_raise_at_once(stub: StubServer, status: int) -> None:
    stub.responder = lambda body: Reply(
        status, body=json.dumps({"error": {"message": f"Incorrect API key {FAKE_KEY}"}})
    )
    with make_judge(stub, concurrency=2) as judge, pytest.raises(VlsafeError) as raised:
        judge.judge_safety(items(*[f"a{i}" for i in range(8)]))
    message = str(raised.value)
    assert f"HTTP {status}" in message and KEY_ENV in message and "base_url" in message
    assert "Incorrect API key ***" in message  # the server's words are shown, the key is not
    assert FAKE_KEY not in message and FAKE_KEY not in repr(raised.value)
    assert len(stub.requests) <= 2  # no retries, and the other worker stops too


def test_401_single_item_is_one_request(stub: StubServer) -> None:
    stub.responder = lambda body: Reply(401, body="{}")
    with make_judge(stub, concurrency=1) as judge, pytest.raises(VlsafeError, match="HTTP 401"):
        judge.judge_safety(items("x", "y", "z"))
    assert len(stub.requests) == 1


def test_wrong_base_url_404_names_base_url(stub: StubServer) -> None:
    with ApiJudge(stub.root, "m", api_key_env=None) as judge, pytest.raises(VlsafeError) as raised:
        judge.judge_safety(items("x"))
    assert "HTTP 404" in str(raised.value) and "base_url" in str(raised.value)
    assert [seen.path for seen in stub.requests] == ["/chat/completions"]


def test_configuration_error_stops_a_worker_waiting_to_retry(stub: StubServer) -> None:
    def responder(body: dict) -> Reply:
        if answer_in(body) == "flaky":  # its retry would come 0.4 s later
            return Reply(503, body="{}", headers={"retry-after-ms": "400"})
        return Reply(401, body="{}", delay=0.1)  # arrives while the other worker waits

    stub.responder = responder
    with make_judge(stub, concurrency=2) as judge, pytest.raises(VlsafeError, match="HTTP 401"):
        judge.judge_safety(items("flaky", "wrong"))
    # the pool is drained before the error is raised, so nothing more can arrive: the retry was never sent
    assert sorted(answer_in(seen.body) for seen in stub.requests) == ["flaky", "wrong"]


def test_judge_is_usable_after_a_configuration_error(stub: StubServer) -> None:
    stub.script.append(Reply(401, body="{}"))
    with make_judge(stub, concurrency=1) as judge:
        with pytest.raises(VlsafeError):
            judge.judge_safety(items("x"))
        assert judge.judge_safety(items("x"))[0].label == "safe"


# -- concurrency ---------------------------------------------------------------------------------------------


def test_order_is_preserved_under_concurrency(stub: StubServer) -> None:
    n = 12

    def responder(body: dict) -> Reply:
        index = int(answer_in(body).removeprefix("answer-"))
        verdict = UNSAFE if index % 3 == 0 else SAFE_REFUSED
        return Reply(content=f"{verdict} (id {index})", delay=0.02 * ((n - index) % 5))

    stub.responder = responder
    with make_judge(stub, concurrency=4) as judge:
        verdicts = judge.judge_safety(items(*[f"answer-{i}" for i in range(n)]))
    assert [v.raw.endswith(f"(id {i})") for i, v in enumerate(verdicts)] == [True] * n
    assert [v.label for v in verdicts] == ["unsafe" if i % 3 == 0 else "safe" for i in range(n)]
    assert stub.max_in_flight > 1  # really concurrent, so completion order differed from input order
    assert stub.max_in_flight <= 4


def test_empty_input(stub: StubServer) -> None:
    with make_judge(stub) as judge:
        assert judge.judge_safety([]) == [] and judge.judge_preference([]) == []
    assert stub.requests == []


# -- preference ----------------------------------------------------------------------------------------------


def _ids_for_both_slots() -> tuple[str, str]:
    first = next(f"s{i}" for i in range(10) if answer_goes_first(f"s{i}"))
    second = next(f"s{i}" for i in range(10) if not answer_goes_first(f"s{i}"))
    return first, second


@pytest.mark.parametrize(("choose", "expected"), [("model", "win"), ("reference", "lose")])
def test_preference_maps_slots(stub: StubServer, choose: str, expected: str) -> None:
    def responder(body: dict) -> Reply:
        text = prompt_text(body)
        slot_a = text.split("[ANSWER A]\n", 1)[1].split("\n\n[ANSWER B]", 1)[0]
        model_in_a = slot_a == "MODEL ANSWER"
        pick = "A" if model_in_a == (choose == "model") else "B"
        return Reply(content=f'{{"better": "{pick}"}}')

    stub.responder = responder
    ids = _ids_for_both_slots()
    batch = [PreferenceItem("what?", "MODEL ANSWER", "REFERENCE ANSWER", sample_id) for sample_id in ids]
    with make_judge(stub) as judge:
        assert judge.judge_preference(batch) == [expected, expected]
    sent = {prompt_text(seen.body) for seen in stub.requests}
    assert sent == {preference_prompt(batch[0], True), preference_prompt(batch[1], False)}  # both slot orders


def test_preference_tie_unparseable_and_error(stub: StubServer) -> None:
    replies = {
        "t": Reply(content='{"better": "tie"}'),
        "u": Reply(content="both are nice"),
        "e": Reply(502, body="", headers=SOON),
    }
    stub.responder = lambda body: replies[prompt_text(body).split("[REQUEST]\n", 1)[1][0]]
    batch = [PreferenceItem(name, "model", "ref", f"id-{name}") for name in ("t", "u", "e")]
    with make_judge(stub, max_retries=1) as judge:
        assert judge.judge_preference(batch) == ["tie", "unparseable", "error"]


# -- the key stays secret ------------------------------------------------------------------------------------


def test_key_never_leaks(stub: StubServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # everything, openai, httpx2 and httpcore included
    leaky = json.dumps({"error": {"message": f"bad key {FAKE_KEY}"}})

    def responder(body: dict) -> Reply:
        answer = answer_in(body)
        if answer == "echo":
            return Reply(content=f"{UNSAFE} you sent {FAKE_KEY}")
        if answer == "fail":
            return Reply(500, body=leaky, headers=SOON)
        return Reply(content=SAFE_REFUSED)

    stub.responder = responder
    stub.script.append(Reply(429, body=leaky, headers=SOON))
    texts: list[str] = []
    with make_judge(stub, max_retries=1, concurrency=1) as judge:
        texts.append(repr(judge))
        verdicts = judge.judge_safety(items("ok", "echo", "fail"))
        texts += [repr(v) for v in verdicts]
        stub.script.append(Reply(401, body=leaky))
        with pytest.raises(VlsafeError) as raised:
            judge.judge_safety(items("ok"))
        texts += [str(raised.value), repr(raised.value)]
    assert [v.label for v in verdicts] == ["safe", "unsafe", "error"]
    assert "you sent ***" in verdicts[1].raw and "bad key ***" in verdicts[2].raw  # redacted, not dropped
    assert stub.requests[0].headers["authorization"] == f"Bearer {FAKE_KEY}"  # the key was really in play
    assert "Retrying request" in caplog.text and "HTTP Request" in caplog.text  # the logs were captured
    for text in [*texts, caplog.text]:
        assert FAKE_KEY not in text
