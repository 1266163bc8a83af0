"""The fault proxy: transparent by default, and each fault does what it says and nothing more.

A real FakeOpenAI sits behind the proxy; the test calls through the proxy with the standard
library's HTTP client, so what the test sees is what any client on the wire would see.
"""

import contextlib
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest

from routemesh_testing.fakes import OPENAI_KEY, BreakStream, FakeOpenAI, StreamStall
from routemesh_testing.faultproxy import (
    AddLatency,
    FaultProxy,
    Hang,
    RateLimitStorm,
    Reset,
    Status,
)
from routemesh_testing.faults import refused_url
from routemesh_testing.serving import ServerThread
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(30)

CHAT = "/v1/chat/completions"
AUTH = {"authorization": f"Bearer {OPENAI_KEY}", "content-type": "application/json"}
PROMPT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI(name="behind-proxy", api_key=OPENAI_KEY)


@pytest.fixture
def upstream(fake: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake.app, name="fake") as server:
        yield server


@pytest.fixture
def proxy(upstream: ServerThread) -> FaultProxy:
    return FaultProxy(upstream.url)


@pytest.fixture
def proxy_url(proxy: FaultProxy) -> Iterator[str]:
    with ServerThread(proxy.app, name="faultproxy") as server:
        yield server.url


def call(
    base: str,
    path: str = CHAT,
    body: dict[str, Any] | None = PROMPT,
    headers: dict[str, str] = AUTH,
    timeout: float = 5.0,
) -> tuple[int, Message, bytes]:
    """One request; HTTP errors are answers too, so they return instead of raising."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


@contextlib.contextmanager
def open_stream(base: str, body: dict[str, Any]) -> Iterator[http.client.HTTPResponse]:
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=5)
    try:
        connection.request("POST", CHAT, body=json.dumps(body), headers=AUTH)
        yield connection.getresponse()
    finally:
        connection.close()


def events_of(response: http.client.HTTPResponse, count: int) -> list[bytes]:
    """Read `count` SSE data lines, skipping blank separators."""
    events: list[bytes] = []
    while len(events) < count:
        line = response.readline()
        assert line, f"the stream ended after {len(events)} events"
        if line.strip():
            events.append(line.strip())
    return events


# ----------------------------------------------------------------------------- pass-through


def test_a_chat_completion_passes_through_unchanged(fake: FakeOpenAI, proxy: FaultProxy, proxy_url):
    status, headers, raw = call(proxy_url, CHAT + "?trace=1")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(raw)["choices"][0]["message"]["content"] == "Hello from behind-proxy"
    assert fake.count(CHAT) == 1
    seen = fake.requests[0]
    assert seen.json == PROMPT
    assert seen.headers["authorization"] == AUTH["authorization"]
    assert proxy.received() == proxy.forwarded() == 1
    assert proxy.received("/chat/completions") == proxy.forwarded("/chat/completions") == 1
    assert proxy.received("/models") == 0


def test_upstream_errors_pass_through(fake: FakeOpenAI, proxy_url):
    status, _, raw = call(proxy_url, headers={**AUTH, "authorization": "Bearer wrong"})
    assert status == 401
    assert json.loads(raw)["error"]["code"] == "invalid_api_key"


def test_a_stream_passes_through_with_every_event(proxy_url):
    with open_stream(proxy_url, {**PROMPT, "stream": True}) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = [line for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    pieces = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert "".join(p or "" for p in pieces) == "Hello from behind-proxy"


def test_a_stream_is_relayed_as_it_arrives_not_buffered(fake: FakeOpenAI, proxy_url):
    # The upstream sends two events and then stalls forever: they must reach the client anyway.
    fake.script(StreamStall(after_chunks=2))
    with open_stream(proxy_url, {**PROMPT, "stream": True}) as response:
        first, second = events_of(response, 2)
    assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(second[6:])["choices"][0]["delta"]["content"]


def test_an_upstream_that_cuts_its_stream_cuts_the_clients(fake: FakeOpenAI, proxy_url):
    fake.script(BreakStream(after_chunks=2))
    with (
        open_stream(proxy_url, {**PROMPT, "stream": True}) as response,
        pytest.raises(http.client.IncompleteRead),
    ):
        response.read()


def test_an_unreachable_upstream_is_a_502_that_names_the_proxy():
    proxy = FaultProxy(refused_url())
    with ServerThread(proxy.app) as server:
        status, _, raw = call(server.url)
    assert status == 502
    assert "faultproxy could not reach" in json.loads(raw)["error"]["message"]


# ----------------------------------------------------------------------------- faults


def test_added_latency_delays_the_answer(fake: FakeOpenAI, proxy: FaultProxy, proxy_url):
    proxy.set_fault(AddLatency(0.2))
    started = time.monotonic()
    status, _, _ = call(proxy_url)
    assert time.monotonic() - started >= 0.2
    assert status == 200
    assert fake.count(CHAT) == proxy.forwarded() == 1


def test_reset_drops_the_connection_and_forwards_nothing(
    fake: FakeOpenAI, proxy: FaultProxy, proxy_url
):
    proxy.set_fault(Reset())
    with pytest.raises(ConnectionError):
        call(proxy_url)
    assert proxy.received() == 1
    assert proxy.forwarded() == 0
    assert fake.count() == 0


def test_hang_never_answers_and_the_client_times_out(
    fake: FakeOpenAI, proxy: FaultProxy, proxy_url
):
    proxy.set_fault(Hang())
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        call(proxy_url, timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert proxy.forwarded() == 0
    assert fake.count() == 0


def test_hang_does_not_hold_up_shutdown_and_never_answers(upstream: ServerThread):
    proxy = FaultProxy(upstream.url)
    proxy.set_fault(Hang())
    server = ServerThread(proxy.app).__enter__()
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=5)
    connection.request("POST", CHAT, body=json.dumps(PROMPT), headers=AUTH)
    assert poll_until(proxy.received, lambda n: n == 1, timeout=5, interval=0.01) == 1
    started = time.monotonic()
    server.__exit__(None, None, None)
    assert time.monotonic() - started < 2.0
    # The waiting client sees the connection end, never a response.
    with pytest.raises(ConnectionError):
        connection.getresponse()
    connection.close()


def test_a_status_fault_answers_in_openai_shape_without_forwarding(
    fake: FakeOpenAI, proxy: FaultProxy, proxy_url
):
    proxy.set_fault(Status(503))
    status, headers, raw = call(proxy_url)
    assert status == 503
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert error["type"] == "server_error"
    assert error["message"]
    assert proxy.forwarded() == 0
    assert fake.count() == 0


def test_a_status_fault_carries_a_given_body_and_headers(proxy: FaultProxy, proxy_url):
    body = {"error": {"message": "overloaded", "type": "overloaded"}}
    proxy.set_fault(Status(529, body=body, headers={"x-fault": "yes"}))
    status, headers, raw = call(proxy_url)
    assert status == 529
    assert headers["x-fault"] == "yes"
    assert json.loads(raw) == body


@pytest.mark.parametrize(
    ("retry_after", "header"), [(2, "2"), (2.0, "2"), (0.5, "0.5"), (None, None)]
)
def test_a_rate_limit_storm_answers_429_with_retry_after(
    fake: FakeOpenAI, proxy: FaultProxy, proxy_url, retry_after, header
):
    proxy.set_fault(RateLimitStorm(retry_after=retry_after))
    for _ in range(3):
        status, headers, raw = call(proxy_url)
        assert status == 429
        assert headers.get("Retry-After") == header
        assert json.loads(raw)["error"]["type"] == "rate_limit_error"
    assert proxy.received() == 3
    assert proxy.forwarded() == 0
    assert fake.count() == 0


def test_a_fault_limited_to_two_requests_then_reverts(
    fake: FakeOpenAI, proxy: FaultProxy, proxy_url
):
    proxy.set_fault(Status(500), times=2)
    statuses = [call(proxy_url)[0] for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert proxy.fault is None
    assert proxy.received() == 3
    assert proxy.forwarded() == fake.count() == 1


def test_a_fault_on_some_paths_leaves_the_others_alone(
    fake: FakeOpenAI, proxy: FaultProxy, proxy_url
):
    proxy.set_fault(Status(500), times=1, paths=("/chat/completions",))
    models, _, raw = call(proxy_url, "/v1/models", body=None)
    assert models == 200
    assert json.loads(raw)["data"][0]["id"] == "m"
    # The models call did not use up the fault's one time.
    assert call(proxy_url)[0] == 500
    assert call(proxy_url)[0] == 200
    assert proxy.forwarded("/v1/models") == 1
    assert proxy.forwarded(CHAT) == 1
    assert fake.count("/v1/models") == 1


def test_clear_and_reset_counts(fake: FakeOpenAI, proxy: FaultProxy, proxy_url):
    proxy.set_fault(Status(500))
    assert call(proxy_url)[0] == 500
    proxy.clear()
    assert proxy.fault is None
    assert call(proxy_url)[0] == 200
    assert (proxy.received(), proxy.forwarded()) == (2, 1)
    proxy.reset_counts()
    assert (proxy.received(), proxy.forwarded()) == (0, 0)


def test_times_must_be_positive(proxy: FaultProxy):
    with pytest.raises(ValueError, match="times"):
        proxy.set_fault(Reset(), times=0)
