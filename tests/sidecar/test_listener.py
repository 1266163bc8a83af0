"""The listener: bad input answered in the caller's API shape, table swaps, admin, standalone mode.

Nothing is sent upstream for a request the sidecar refuses; a request in flight finishes on the
table it started with; the admin port shows the active table without secrets.
"""

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest
from opentelemetry.sdk.trace import SpanProcessor

from routemesh_sidecar.routing import pipeline
from routemesh_testing.fakes import OPENAI_KEY, Delay, Reply, StreamStall
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.sidecar import SidecarProcess, SidecarThread, metric_samples, write_table
from routemesh_testing.tables import backend, model_info, route, table
from routemesh_testing.waiting import poll_until


def single_table(url: str, version: int = 1):
    return table(
        {"openai": backend(url, models={"m": model_info()}, key_env="OPENAI_KEY")},
        route("chat", ("openai", "m"), match={"models": ["m", "gpt-4o"]}),
        version=version,
    )


@pytest.fixture
def sidecar(
    workdir: Path, openai_upstream, span_processor: SpanProcessor, variables
) -> Iterator[SidecarThread]:
    with SidecarThread(
        single_table(openai_upstream[1]),
        workdir,
        span_processor=span_processor,
        variables=variables,
        max_body_bytes=4096,
    ) as s:
        yield s


async def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=body, headers={"content-type": "application/json", **(headers or {})}
        ) as response,
    ):
        return response.status, json.loads(await response.read())


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/chat/completions", b"{not json", 400, "JSON"),
        ("/v1/chat/completions", b'["a list"]', 400, "object"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        ("/v1/chat/completions", b'{"model": "m"}', 400, "messages"),
        ("/v1/chat/completions", b'{"model": "m", "messages": []}', 400, "messages"),
        (
            "/v1/chat/completions",
            b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "nope",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}',
            413,
            "limit",
        ),
        ("/v1/embeddings", b'{"model": "m"}', 400, "input"),
        ("/v1/completions", b'{"model": "m"}', 400, "prompt"),
    ],
)
async def test_bad_openai_requests_get_openai_errors_and_go_nowhere(
    sidecar: SidecarThread, openai_upstream, path: str, body: bytes, status: int, words: str
):
    fake, _ = openai_upstream
    got, error = await post(sidecar.base_url + path, body)
    assert got == status
    assert set(error["error"]) >= {"message", "type", "code", "param"}
    assert words in error["error"]["message"]
    assert fake.count() == 0, "nothing is sent upstream for a refused request"


@pytest.mark.asyncio
async def test_a_chunked_body_past_the_limit_is_refused_while_it_is_read(
    sidecar: SidecarThread, openai_upstream
):
    """No Content-Length to check first: the limit holds while the body is read."""
    fake, _ = openai_upstream

    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    async with (
        aiohttp.ClientSession() as session,
        session.post(sidecar.base_url + "/v1/chat/completions", data=pieces()) as response,
    ):
        assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
        error = json.loads(await response.read())
    assert response.status == 413
    assert "limit of 4096 bytes" in error["error"]["message"]
    assert fake.count() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path", "status", "words", "allow"),
    [
        ("POST", "/v1/chat/completion", 404, "no such path: /v1/chat/completion", None),
        ("POST", "/v1%2Fchat/completions", 404, "no such path: /v1%2Fchat/completions", None),
        ("GET", "/", 404, "no such path: /", None),
        ("GET", "/v1/chat/completions", 405, "GET is not allowed", "POST"),
        ("POST", "/v1/models", 405, "use GET", "GET, HEAD"),
    ],
)
async def test_an_unknown_path_or_method_gets_an_openai_error(
    sidecar: SidecarThread,
    openai_upstream,
    method: str,
    path: str,
    status: int,
    words: str,
    allow: str | None,
):
    fake, _ = openai_upstream
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, sidecar.base_url + path, data=b"{}") as response,
    ):
        error = json.loads(await response.read())
    assert response.status == status
    assert words in error["error"]["message"]
    assert response.headers.get("Allow") == allow
    assert fake.count() == 0


def expect_continue(
    sidecar: SidecarThread, content_length: int, expect: bytes = b"100-continue"
) -> tuple[bytes, socket.socket]:
    """Send a chat request's head with `Expect: 100-continue`; the sidecar's first answer."""
    port = int(sidecar.base_url.rsplit(":", 1)[1])
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\n"
        b"Content-Type: application/json\r\nExpect: %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (expect, content_length)
    )
    return client.recv(65536), client


def test_a_client_that_expects_100_continue_is_told_to_send_its_body(
    sidecar: SidecarThread, openai_upstream
):
    """A client such as curl sends `Expect: 100-continue` past 1 KiB, and waits to be told."""
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 1500}]}
    ).encode()
    first, client = expect_continue(sidecar, len(body))
    with client:
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
    assert openai_upstream[0].count() == 1


def test_a_body_past_the_limit_is_refused_before_the_client_sends_it(
    sidecar: SidecarThread, openai_upstream
):
    first, client = expect_continue(sidecar, 5000)
    with client:
        assert first.startswith(b"HTTP/1.1 413 "), first[:200]
        assert b"limit of 4096 bytes" in first
    assert openai_upstream[0].count() == 0


def test_an_expectation_other_than_100_continue_is_refused(sidecar: SidecarThread, openai_upstream):
    first, client = expect_continue(sidecar, 100, expect=b"something-else")
    with client:
        assert first.startswith(b"HTTP/1.1 417 "), first[:200]
        assert b"something-else" in first
    assert openai_upstream[0].count() == 0


def test_an_empty_expect_header_expects_nothing(sidecar: SidecarThread, openai_upstream):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    port = int(sidecar.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\nExpect: \r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
    assert openai_upstream[0].count() == 1


@pytest.mark.asyncio
async def test_an_app_that_leaves_mid_stream_is_not_taken_for_a_broken_upstream(
    sidecar: SidecarThread, openai_upstream, otlp: OTLPReceiver, caplog: pytest.LogCaptureFixture
):
    fake, _ = openai_upstream
    fake.script(Reply(text=" ".join(["word"] * 40), chunks=40, chunk_gap_seconds=0.05))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        response = await session.post(sidecar.base_url + "/v1/chat/completions", json=body)
        assert response.status == 200
        assert (await response.content.readline()).startswith(b"data: {")
        response.close()  # the app leaves mid-stream: its connection closes
    span = otlp.route_span("chat")
    assert span.attributes["error.type"] == "downstream_closed"
    assert "closed its connection" in span.status_message
    assert "routemesh.downstream.closed" in [name for name, _ in span.events]
    [attempt] = otlp.wait_for(lambda s: s.parent_span_id == span.span_id)
    assert "error.type" not in attempt.attributes, "the upstream did nothing wrong"
    assert span.attributes["gen_ai.usage.output_tokens"] < 40, "billed for what was generated"
    broken = metric_samples(
        sidecar.admin_url, "routemesh_errors_total", error_class="stream_broken"
    )
    assert sum(broken) == 0
    gone = metric_samples(
        sidecar.admin_url, "routemesh_errors_total", error_class="downstream_closed"
    )
    assert gone == [1.0]
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]


async def leave_after(url: str, body: dict, read_first_line: bool) -> float:
    """Post `body`, leave (close the connection) once the answer began or 0.3 s passed."""
    async with aiohttp.ClientSession() as session:
        if read_first_line:
            response = await session.post(url, json=body)
            assert (await response.content.readline()).startswith(b"data: {")
            response.close()
        else:
            with contextlib.suppress(TimeoutError):
                await session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=0.3))
    return time.monotonic()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("behaviour", "stream"),
    [
        (Delay(30.0), False),  # a long answer still being generated
        (StreamStall(after_chunks=2), True),  # a stream whose upstream went quiet
    ],
    ids=["whole-answer", "stalled-stream"],
)
async def test_an_app_that_leaves_stops_its_attempt_at_once(
    sidecar: SidecarThread, openai_upstream, otlp: OTLPReceiver, behaviour, stream: bool
):
    """Not at the next write, which may be the deadline: the attempt and its cost stop now."""
    fake, _ = openai_upstream
    fake.script(behaviour)
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    left = await leave_after(sidecar.base_url + "/v1/chat/completions", body, stream)
    span = otlp.route_span("chat")
    assert time.monotonic() - left < 5, "the route ended with the app, not at the deadline"
    assert span.attributes["error.type"] == "downstream_closed"
    [attempt] = otlp.wait_for(lambda s: s.parent_span_id == span.span_id)
    assert "error.type" not in attempt.attributes, "the upstream did nothing wrong"
    gone = metric_samples(
        sidecar.admin_url, "routemesh_errors_total", error_class="downstream_closed"
    )
    assert gone == [1.0]
    assert sum(metric_samples(sidecar.admin_url, "routemesh_errors_total")) == 1.0
    assert fake.count() == 1, "no retry and no fallback for an app that left"


@pytest.mark.asyncio
async def test_head_on_the_model_list_answers_its_headers_only(sidecar: SidecarThread):
    async with aiohttp.ClientSession() as session:
        async with session.head(sidecar.base_url + "/v1/models") as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            assert await response.read() == b""
        async with session.get(sidecar.base_url + "/v1/models") as response:
            listed = json.loads(await response.read())
    assert [model["id"] for model in listed["data"]] == ["gpt-4o", "m"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "JSON"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}', 400, "max_tokens"),
        (
            b'{"model": "zzz", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}',
            404,
            "zzz",
        ),
    ],
)
async def test_bad_anthropic_requests_get_anthropic_errors(
    sidecar: SidecarThread, openai_upstream, body: bytes, status: int, words: str
):
    fake, _ = openai_upstream
    got, error = await post(
        sidecar.base_url + "/v1/messages", body, {"anthropic-version": "2023-06-01"}
    )
    assert got == status
    assert error["type"] == "error"
    assert words in error["error"]["message"]
    assert error["error"]["type"] in ("invalid_request_error", "not_found_error")
    assert fake.count() == 0


def test_sdk_errors_are_typed_by_status(sidecar: SidecarThread):
    with (
        openai.OpenAI(base_url=sidecar.openai_base_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.NotFoundError),
    ):
        client.chat.completions.create(model="unknown", messages=[{"role": "user", "content": "x"}])
    with (
        anthropic.Anthropic(base_url=sidecar.base_url, api_key="x", max_retries=0) as client,
        pytest.raises(anthropic.NotFoundError),
    ):
        client.messages.create(
            model="unknown", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )


def test_in_flight_request_finishes_on_the_old_table_while_a_new_one_swaps_in(
    sidecar: SidecarThread, openai_upstream, openai_spare
):
    old, _ = openai_upstream
    new, new_url = openai_spare
    old.script(Delay(0.5, Reply(text="answered by the old table")))

    async def scenario() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=sidecar.openai_base_url, api_key="x", max_retries=0)
        async with client:
            slow = asyncio.create_task(
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
            )
            # Swap only once the request has reached the old upstream.
            await asyncio.to_thread(poll_until, old.count, bool, timeout=5, interval=0.01)
            await asyncio.to_thread(sidecar.swap, single_table(new_url, version=2))
            fresh = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
            return (await slow).choices[0].message.content or "", fresh.choices[
                0
            ].message.content or ""

    first, second = asyncio.run(scenario())
    assert first == "answered by the old table"
    assert second == "Hello from fake-openai-spare"
    assert old.count() == 1
    assert new.count() == 1


def test_config_dump_shows_the_table_without_secrets_and_readyz(sidecar: SidecarThread):
    import urllib.request

    with urllib.request.urlopen(sidecar.admin_url + "/config_dump", timeout=5) as response:  # noqa: S310
        dump = json.loads(response.read())
    with urllib.request.urlopen(sidecar.admin_url + "/readyz", timeout=5) as response:  # noqa: S310
        assert response.status == 200
    table_dump = dump["route_table"]
    assert table_dump["version"].startswith("1-")
    assert table_dump["routes"][0]["name"] == "chat"
    assert table_dump["backends"]["openai"]["credentials"] == "configured"
    assert OPENAI_KEY not in json.dumps(dump)
    assert "OPENAI_KEY" not in json.dumps(dump), "not even where the key comes from"


def test_an_invalid_table_is_refused_and_the_last_good_one_keeps_serving(
    sidecar: SidecarThread, openai_upstream
):
    sidecar.table_path.write_text('{"version": 2, "routes": []}')
    source = sidecar.running.source
    sidecar.run(source.poll_once())  # type: ignore[union-attr]
    assert sidecar.running.active.last_error is not None
    assert "routes" in sidecar.running.active.last_error
    with openai.OpenAI(base_url=sidecar.openai_base_url, api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert reply.choices[0].message.content == "Hello from fake-openai"


def test_a_table_with_a_strategy_the_sidecar_cannot_run_is_refused(
    sidecar: SidecarThread, openai_upstream, monkeypatch: pytest.MonkeyPatch
):
    _fake, url = openai_upstream
    cascade = table(
        {"openai": backend(url, models={"m": model_info(), "n": model_info()})},
        route("chat", ("openai", "m"), ("openai", "n"), strategy="Cascade"),
        version=9,
    )
    # This version runs every strategy: take one away to see a table that needs it refused.
    monkeypatch.delitem(pipeline.STRATEGIES, "Cascade")
    sidecar.swap(cascade)
    assert sidecar.running.active.current is not None
    assert sidecar.running.active.current.version == 1
    assert "strategy Cascade is not supported" in (sidecar.running.active.last_error or "")
    monkeypatch.undo()
    sidecar.swap(cascade)
    assert sidecar.running.active.current.version == 9, "a sidecar that runs Cascade takes it"
    assert sidecar.running.active.last_error is None


def admin_metrics(process: SidecarProcess) -> str:
    with urllib.request.urlopen(process.admin_url + "/metrics", timeout=5) as response:  # noqa: S310
        return str(response.read().decode())


def test_standalone_process_serves_exports_otlp_and_propagates_trace_context(
    workdir: Path, openai_upstream, otlp
):
    fake, url = openai_upstream
    path = workdir / "standalone.json"
    write_table(path, single_table(url))
    env = {
        **os.environ,
        "OPENAI_KEY": OPENAI_KEY,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint.removesuffix("/v1/traces"),
        "OTEL_SERVICE_NAME": "checkout-sidecar",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=checkout-7d9f,k8s.namespace.name=shop",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    app_span = "00f067aa0ba902b7"
    with (
        SidecarProcess(path, env, workdir / "sidecar.log") as process,
        openai.OpenAI(base_url=process.base_url + "/v1", api_key="x", max_retries=0) as client,
    ):
        reply = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"traceparent": f"00-{trace_id}-{app_span}-01"},
        )
        [route_span] = otlp.wait_for(lambda s: s.name == "routemesh.route", timeout=10)
        [attempt] = otlp.wait_for(lambda s: s.parent_span_id == route_span.span_id, timeout=10)
        # The receiver has them; the sidecar counts them when it reads the receiver's 200.
        metrics = poll_until(
            lambda: admin_metrics(process),
            lambda text: "routemesh_spans_exported_total 2.0" in text,
            timeout=10,
        )
    assert reply.choices[0].message.content == "Hello from fake-openai"
    assert "routemesh_spans_exported_total 2.0" in metrics, "both spans counted as exported"
    assert 'routemesh_spans_dropped_total{reason="queue_full"}' not in metrics
    assert fake.requests[-1].headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert route_span.trace_id == trace_id, "the app's trace continues through the sidecar"
    assert route_span.parent_span_id == app_span
    assert route_span.resource["service.name"] == "checkout-sidecar"
    assert route_span.resource["k8s.pod.name"] == "checkout-7d9f"
    upstream_parent = fake.requests[-1].headers["traceparent"]
    assert upstream_parent == f"00-{trace_id}-{attempt.span_id}-01", "the upstream joins the trace"
