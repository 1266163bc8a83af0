"""Faults upstream: what the client sees, and what the trace records, for each.

The route has a primary and a spare OpenAI-compatible backend (and a larger-context model for
context-length fallback). Faults are scripted on the fakes, or come from addresses that refuse,
blackhole or hang. Backoff is tiny so that retries cost no wall time; the deadlines under test
are real, and short.
"""

import time

import openai
import pytest

from routemesh_sidecar.listener.proxy import counted_usage
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.tokens import load_tokenizers
from routemesh_testing.fakes import BreakStream, Fail, FakeOpenAI, Hang, Malformed
from routemesh_testing.faults import Blackhole, refused_url
from routemesh_testing.otlp import OTLPReceiver, ReceivedSpan
from routemesh_testing.sidecar import SidecarThread, StartSidecar
from routemesh_testing.tables import backend, model_info, route, table

FAST_RETRY = {
    "retry": {"attempts": 2, "backoff": {"base": 0.001, "max": 0.002}},
    "timeouts": {"connect": 0.3, "first_token": 0.5, "total": 5.0},
}


def make_table(primary_url: str, spare_url: str, **overrides):
    settings = {**FAST_RETRY, **overrides}
    return table(
        {
            "primary": backend(primary_url, models={"m": model_info(8_000)}, key_env="OPENAI_KEY"),
            "spare": backend(
                spare_url,
                models={"m": model_info(8_000), "m-long": model_info(1_000_000)},
                key_env="OPENAI_KEY",
            ),
        },
        route(
            "long", ("primary", "m"), ("spare", "m-long"), match={"models": ["long"]}, **settings
        ),
        route("solo", ("primary", "m"), match={"models": ["solo"]}, **settings),
        route("chat", ("primary", "m"), ("spare", "m"), **settings),
    )


@pytest.fixture
def upstreams(
    openai_upstream: tuple[FakeOpenAI, str], openai_spare: tuple[FakeOpenAI, str]
) -> tuple[FakeOpenAI, FakeOpenAI]:
    return openai_upstream[0], openai_spare[0]


@pytest.fixture
def sidecar(
    openai_upstream: tuple[FakeOpenAI, str],
    openai_spare: tuple[FakeOpenAI, str],
    start_sidecar: StartSidecar,
) -> SidecarThread:
    routes = make_table(openai_upstream[1], openai_spare[1])
    return start_sidecar(routes)


def client(sidecar: SidecarThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.openai_base_url, api_key="app", max_retries=0, timeout=20)


def ask(sidecar: SidecarThread, model: str = "any", **kwargs):
    with client(sidecar) as c:
        return c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}], **kwargs
        )


def route_span(
    otlp: OTLPReceiver, sidecar: SidecarThread
) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The newest route span and its attempt spans, in attempt order."""
    spans = otlp.wait_for(lambda s: s.name == "routemesh.route")
    span = max(spans, key=lambda s: s.start_ns)
    attempts = otlp.wait_for(lambda s: s.parent_span_id == span.span_id)
    return span, sorted(attempts, key=lambda s: s.attributes["routemesh.attempt.index"])


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried_then_falls_back_and_the_client_sees_success(
    status: int, sidecar: SidecarThread, upstreams, otlp: OTLPReceiver
):
    primary, _spare = upstreams
    otlp.clear()
    primary.always(Fail(status))
    raw = ask(sidecar)
    assert raw.parse().choices[0].message.content == "Hello from fake-openai-spare"
    assert raw.headers["x-routemesh-backend"] == "spare"
    assert raw.headers["x-routemesh-attempts"] == "3"
    assert primary.count() == 2, "the route allows two attempts per target"
    span, attempts = route_span(otlp, sidecar)
    expected = "overloaded" if status == 503 else "server_error"
    assert [a.attributes.get("error.type") for a in attempts] == [expected, expected, None]
    assert [a.attributes["routemesh.backend"] for a in attempts] == ["primary", "primary", "spare"]
    assert attempts[0].attributes["http.response.status_code"] == status
    assert span.attributes["routemesh.fallback.cause"] == expected
    assert span.status_code != 2, "the request succeeded"


def test_429_with_retry_after_goes_to_the_fallback_at_once_and_cools_the_primary_down(
    sidecar: SidecarThread, upstreams, otlp: OTLPReceiver
):
    # Found from outside: this waited the full 30 s, then retried the primary.
    primary, _spare = upstreams
    otlp.clear()
    primary.always(Fail(429, retry_after="30"))
    started = time.monotonic()
    raw = ask(sidecar)
    elapsed = time.monotonic() - started
    assert raw.headers["x-routemesh-backend"] == "spare"
    assert raw.headers["x-routemesh-attempts"] == "2"
    assert elapsed < 1.0, f"answered by the fallback without waiting, took {elapsed:.2f}s"
    span, attempts = route_span(otlp, sidecar)
    assert [a.attributes.get("error.type") for a in attempts] == ["rate_limited", None]
    decisions = [e for name, e in span.events if name == "routemesh.retry_after"]
    assert [e["routemesh.retry_after.decision"] for e in decisions] == ["fell_back"]
    again = ask(sidecar)
    assert again.headers["x-routemesh-backend"] == "spare"
    assert primary.count() == 1, "the primary stays cooled down for its Retry-After"


def test_429_with_retry_after_on_a_lone_target_reaches_the_client_with_its_retry_after(
    sidecar: SidecarThread, upstreams
):
    primary, spare = upstreams
    primary.script(Fail(429, retry_after="2"))
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as refused:
        ask(sidecar, model="solo")
    assert time.monotonic() - started < 1.0, "longer than the longest backoff: not waited for"
    assert refused.value.response.headers["retry-after"] == "2"
    assert primary.count() == 1
    assert spare.count() == 0


def test_429_with_retry_after_beyond_the_deadline_falls_back_at_once(
    sidecar: SidecarThread, upstreams
):
    primary, _spare = upstreams
    primary.always(Fail(429, retry_after="60"))
    started = time.monotonic()
    raw = ask(sidecar)
    assert time.monotonic() - started < 2
    assert raw.headers["x-routemesh-backend"] == "spare"
    assert primary.count() == 1, "no point retrying what cannot happen before the deadline"


def test_429_without_retry_after_backs_off_and_retries(sidecar: SidecarThread, upstreams, otlp):
    primary, spare = upstreams
    primary.script(Fail(429))
    raw = ask(sidecar)
    assert raw.headers["x-routemesh-backend"] == "primary"
    assert raw.headers["x-routemesh-attempts"] == "2"
    assert spare.count() == 0


def test_429_everywhere_reaches_the_client_as_429_with_retry_after(
    sidecar: SidecarThread, upstreams
):
    primary, spare = upstreams
    primary.always(Fail(429, retry_after="60"))
    spare.always(Fail(429, retry_after="30"))
    with pytest.raises(openai.RateLimitError) as refused:
        ask(sidecar)
    assert refused.value.status_code == 429
    assert refused.value.response.headers["retry-after"] == "30"
    assert "rate_limited" in str(refused.value)


def test_400_never_falls_back_and_the_client_sees_the_upstreams_message(
    sidecar: SidecarThread, upstreams, otlp: OTLPReceiver
):
    primary, spare = upstreams
    otlp.clear()
    primary.script(Fail(400, message="temperature must be at most 2"))
    with pytest.raises(openai.BadRequestError) as refused:
        ask(sidecar)
    assert "temperature must be at most 2" in str(refused.value)
    assert primary.count() == 1
    assert spare.count() == 0
    span, attempts = route_span(otlp, sidecar)
    assert attempts[0].attributes["error.type"] == "client_error"
    assert span.attributes["error.type"] == "client_error"


def test_context_length_falls_back_only_to_a_larger_context_model(
    sidecar: SidecarThread, upstreams
):
    primary, spare = upstreams
    primary.script(
        Fail(400, message="maximum context length exceeded", code="context_length_exceeded")
    )
    raw = ask(sidecar, model="long")
    assert raw.headers["x-routemesh-model"] == "m-long"
    assert spare.requests[-1].json["model"] == "m-long"
    assert primary.count() == 1, "context length is not retried"


def test_malformed_upstream_body_is_bad_response_and_falls_back(
    sidecar: SidecarThread, upstreams, otlp: OTLPReceiver
):
    primary, _spare = upstreams
    otlp.clear()
    primary.always(Malformed())
    raw = ask(sidecar)
    assert raw.headers["x-routemesh-backend"] == "spare"
    _, attempts = route_span(otlp, sidecar)
    assert attempts[0].attributes["error.type"] == "bad_response"


def test_malformed_body_with_no_fallback_is_a_502_never_a_truncated_answer(
    sidecar: SidecarThread, upstreams
):
    primary, spare = upstreams
    primary.always(Malformed())
    spare.always(Malformed())
    with pytest.raises(openai.APIStatusError) as failed:
        ask(sidecar)
    assert failed.value.status_code == 502
    assert "bad_response" in str(failed.value)


def test_connection_refused_falls_back(workdir, openai_spare, span_processor, variables, otlp):
    _spare, spare_url = openai_spare
    routes = make_table(refused_url() + "/v1", spare_url)
    with SidecarThread(routes, workdir, span_processor=span_processor, variables=variables) as s:
        otlp.clear()
        raw = ask(s)
        _, attempts = route_span(otlp, s)
    assert raw.headers["x-routemesh-backend"] == "spare"
    assert raw.headers["x-routemesh-attempts"] == "2", "a refused connection is not retried"
    assert attempts[0].attributes["error.type"] == "connect_error"


def test_blackholed_connect_times_out_and_falls_back(
    workdir, openai_spare, span_processor, variables, otlp
):
    _, spare_url = openai_spare
    with Blackhole() as hole:
        routes = make_table(hole.url + "/v1", spare_url)
        with SidecarThread(
            routes, workdir, span_processor=span_processor, variables=variables
        ) as s:
            otlp.clear()
            started = time.monotonic()
            raw = ask(s)
            elapsed = time.monotonic() - started
            _, attempts = route_span(otlp, s)
    assert raw.headers["x-routemesh-backend"] == "spare"
    assert attempts[0].attributes["error.type"] in ("connect_error", "timeout")
    assert elapsed < 2 * 0.3 + 1.0, "each connect gave up after timeouts.connect"


def test_hanging_response_hits_the_first_token_timeout_and_falls_back(
    sidecar: SidecarThread, upstreams, otlp: OTLPReceiver
):
    primary, _spare = upstreams
    otlp.clear()
    primary.always(Hang())
    started = time.monotonic()
    raw = ask(sidecar)
    elapsed = time.monotonic() - started
    assert raw.headers["x-routemesh-backend"] == "spare"
    assert 2 * 0.5 <= elapsed < 2 * 0.5 + 1.0
    _, attempts = route_span(otlp, sidecar)
    assert attempts[0].attributes["error.type"] == "timeout"


def test_total_deadline_bounds_every_retry_and_fallback(
    workdir, openai_upstream, openai_spare, span_processor, variables
):
    primary, primary_url = openai_upstream
    spare, spare_url = openai_spare
    primary.always(Hang())
    spare.always(Hang())
    routes = make_table(
        primary_url, spare_url, timeouts={"connect": 0.3, "first_token": 5.0, "total": 0.8}
    )
    with SidecarThread(routes, workdir, span_processor=span_processor, variables=variables) as s:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as failed:
            ask(s)
        elapsed = time.monotonic() - started
    assert failed.value.status_code == 504
    assert elapsed < 1.5


def test_stream_broken_before_the_first_chunk_fails_over_invisibly(
    sidecar: SidecarThread, upstreams
):
    primary, _spare = upstreams
    primary.always(BreakStream(after_chunks=0))
    with client(sidecar) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="any", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = list(raw.parse())
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in chunks)
        == "Hello from fake-openai-spare"
    )
    assert raw.headers["x-routemesh-attempts"] == "3", "two tries on the primary, then the spare"
    assert primary.count() == 2


def test_stream_broken_after_the_first_chunk_ends_with_an_error_the_client_sees(
    sidecar: SidecarThread, upstreams, otlp: OTLPReceiver
):
    primary, spare = upstreams
    otlp.clear()
    primary.script(BreakStream(after_chunks=2))
    received: list[str] = []

    def read_stream() -> None:
        with client(sidecar) as c:
            stream = c.chat.completions.create(
                model="any", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            received.extend(chunk.choices[0].delta.content or "" for chunk in stream)

    with pytest.raises(openai.APIError) as broken:
        read_stream()
    assert 1 <= len(received) <= 2, "the first chunks arrived before the break"
    assert "stream" in str(broken.value)
    assert spare.count() == 0, "after the first byte there is no failover"
    span, attempts = route_span(otlp, sidecar)
    assert span.attributes["error.type"] == "stream_broken"
    assert any(name == "routemesh.stream.broken" for name, _ in span.events)
    assert attempts[-1].attributes["error.type"] == "stream_broken"


def test_an_app_gone_while_the_streams_error_is_written_still_gets_its_records(
    sidecar: SidecarThread, upstreams, otlp: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
):
    """The server cancels the handler of an app that left; here that lands on the error's write.

    The cancellation goes on up, but only after the spans, the cost and the counts are done.
    """
    import asyncio
    import urllib.request

    from routemesh_sidecar.listener import proxy

    async def app_gone_during_the_write(*_: object) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(proxy, "_write_terminal_error", app_gone_during_the_write)
    primary, _ = upstreams
    otlp.clear()
    primary.script(BreakStream(after_chunks=2))
    with pytest.raises(openai.APIError), client(sidecar) as c:
        for _chunk in c.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
    span, attempts = route_span(otlp, sidecar)
    assert span.attributes["error.type"] == "stream_broken"
    event_names = [name for name, _ in span.events]
    assert "routemesh.stream.broken" in event_names
    assert "routemesh.downstream.closed" in event_names
    assert span.attributes["routemesh.cost.usd"] > 0, "what was streamed is still billed"
    assert attempts[-1].attributes["error.type"] == "stream_broken"
    with urllib.request.urlopen(sidecar.admin_url + "/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    counted = 'routemesh_requests_total{backend="primary",code="200",model="m",route="chat"} 1.0'
    assert counted in text


def test_metrics_count_attempts_and_errors_by_class(sidecar: SidecarThread, upstreams):
    import urllib.request

    primary, _ = upstreams
    primary.script(Fail(503))
    ask(sidecar)
    with urllib.request.urlopen(sidecar.admin_url + "/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    assert 'routemesh_attempts_total{backend="primary",model="m",outcome="overloaded"} 1.0' in text
    assert 'routemesh_errors_total{error_class="overloaded"} 1.0' in text
    assert (
        'routemesh_requests_total{backend="primary",code="200",model="m",route="chat"} 1.0' in text
    )
    assert "routemesh_time_to_first_token_seconds_bucket" in text


def test_a_stream_cut_before_its_usage_is_counted_and_billed_by_what_was_sent(
    sidecar: SidecarThread, upstreams, otlp: OTLPReceiver
):
    primary, _ = upstreams
    otlp.clear()
    primary.script(BreakStream(after_chunks=3))
    received: list[str] = []
    prompt = "Tell me about the weather in Lisbon in the spring."

    def read_stream() -> None:
        with client(sidecar) as c:
            stream = c.chat.completions.create(
                model="any", messages=[{"role": "user", "content": prompt}], stream=True
            )
            received.extend(chunk.choices[0].delta.content or "" for chunk in stream)

    with pytest.raises(openai.APIError):
        read_stream()
    text = "".join(received)
    assert text, "some of the answer arrived before the cut"
    span, attempts = route_span(otlp, sidecar)
    assert sidecar.running.settings.exact_tokens, "the sidecar under test counts exactly"
    tokenizers = load_tokenizers()
    assert tokenizers is not None
    vocabulary = tokenizers.for_model("m")
    assert span.attributes["routemesh.usage.counted"] == vocabulary.name
    assert span.attributes["gen_ai.usage.output_tokens"] == vocabulary.count(text)
    assert span.attributes["gen_ai.usage.input_tokens"] > 0
    assert span.attributes["routemesh.cost.usd"] > 0, "a cut stream is not free"
    assert attempts[-1].attributes["gen_ai.usage.output_tokens"] == vocabulary.count(text)
    assert sidecar.metric("routemesh_tokens_total", kind="output") == vocabulary.count(text)


def test_without_a_tokenizer_a_cut_stream_is_counted_by_the_estimate():
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}]}
    routing = RoutingRequest("openai", "chat", "m", {}, body)
    usage, method = counted_usage(routing, "m", "y" * 18)
    assert method == "estimate"
    assert usage.output_tokens == 5  # a quarter of the characters, rounded up
    assert usage.input_tokens == routing.signals.prompt_tokens
    usage, _ = counted_usage(routing, "m", "")
    assert usage.output_tokens == 0
