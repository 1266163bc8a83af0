"""The Cascade strategy through the official OpenAI client, in front of fake providers.

As in the tiered example: a free route cascades from a cheap OpenAI model to a dearer Anthropic
one, with the gate at 20 output tokens, refusals and cut-off answers rejected. The fakes count
one output token per word. Each test checks what the client got, what each upstream was asked,
the response headers, and what the trace says about the escalation.
"""

import openai
import pytest

from routemesh_testing.fakes import BreakStream, Fail, FakeAnthropic, FakeOpenAI, Reply
from routemesh_testing.otlp import OTLPReceiver, ReceivedSpan
from routemesh_testing.sidecar import SidecarThread, StartSidecar
from routemesh_testing.tables import backend, model_info, route, table

pytestmark = pytest.mark.timeout(60)

GATE = {"min_output_tokens": 20, "reject_refusals": True, "require_complete": True}
LONG = (
    "Paris is the capital of France. It sits on the Seine, has about two million people in the "
    "city itself, and has been the seat of government for most of the last thousand years."
)
REFUSAL = (
    "I'm sorry, but I can't help with that request. It asks for something that I am not able to "
    "provide, now or later, in any form at all."
)
CHEAP_PRICES = (0.15, 0.60)
DEAR_PRICES = (0.80, 4.00)


@pytest.fixture
def sidecar(
    openai_upstream: tuple[FakeOpenAI, str],
    anthropic_upstream: tuple[FakeAnthropic, str],
    start_sidecar: StartSidecar,
) -> SidecarThread:
    routes = table(
        {
            "openai": backend(
                openai_upstream[1],
                models={"gpt-4o-mini": model_info(input_price=0.15, output_price=0.6)},
                key_env="OPENAI_KEY",
            ),
            "anthropic": backend(
                anthropic_upstream[1],
                api="anthropic",
                models={
                    "claude-3-5-haiku-latest": model_info(200_000, input_price=0.8, output_price=4)
                },
                key_env="ANTHROPIC_KEY",
            ),
        },
        route(
            "free",
            ("openai", "gpt-4o-mini"),
            ("anthropic", "claude-3-5-haiku-latest"),
            strategy="Cascade",
            cascade={"quality_gate": GATE},
            match={"models": ["free"]},
            retry={"attempts": 1},
        ),
        route("dear-only", ("anthropic", "claude-3-5-haiku-latest"), match={"models": ["dear"]}),
    )
    return start_sidecar(routes)


def client(sidecar: SidecarThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.openai_base_url, api_key="app", max_retries=0, timeout=20)


def ask(sidecar: SidecarThread, model: str = "free"):
    with client(sidecar) as c:
        return c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "What is the capital of France?"}]
        )


def stream(sidecar: SidecarThread, model: str = "free"):
    with client(sidecar) as c:
        raw = c.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            stream=True,
        )
        return raw.headers, list(raw.parse())


def route_span(otlp: OTLPReceiver) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The newest route span and its attempt spans, in attempt order."""
    span = max(otlp.wait_for(lambda s: s.name == "routemesh.route"), key=lambda s: s.start_ns)
    attempts = otlp.wait_for(lambda s: s.parent_span_id == span.span_id)
    return span, sorted(attempts, key=lambda s: s.attributes["routemesh.attempt.index"])


def test_a_good_cheap_answer_is_the_answer_and_the_dearer_model_is_never_asked(
    sidecar: SidecarThread, openai_upstream, anthropic_upstream, otlp: OTLPReceiver
):
    cheap, dear = openai_upstream[0], anthropic_upstream[0]
    cheap.script(Reply(text=LONG))
    raw = ask(sidecar)
    assert raw.parse().choices[0].message.content == LONG
    assert raw.headers["x-routemesh-backend"] == "openai"
    assert raw.headers["x-routemesh-attempts"] == "1"
    assert (cheap.count(), dear.count()) == (1, 0)
    span, [attempt] = route_span(otlp)
    assert span.attributes["routemesh.strategy"] == "Cascade"
    assert span.attributes["routemesh.cascade.outcome"] == "accepted"
    assert span.attributes["routemesh.cascade.tried"] == ["openai/gpt-4o-mini"]
    assert span.attributes.get("routemesh.cascade.escalations", []) == []
    assert not [name for name, _ in span.events if name.startswith("routemesh.cascade")]
    assert "routemesh.cascade.escalated" not in attempt.attributes


@pytest.mark.parametrize(
    ("cheap_reply", "reason", "finish"),
    [
        (Reply(text="Paris."), "too_short", "stop"),
        (Reply(text=LONG, finish_reason="length"), "incomplete", "length"),
        (Reply(text=REFUSAL), "refusal", "stop"),
    ],
    ids=["too-short", "truncated", "refusal"],
)
def test_a_weak_cheap_answer_escalates_and_the_client_gets_the_dearer_answer(
    sidecar: SidecarThread,
    openai_upstream,
    anthropic_upstream,
    otlp: OTLPReceiver,
    cheap_reply: Reply,
    reason: str,
    finish: str,
):
    cheap, dear = openai_upstream[0], anthropic_upstream[0]
    cheap.script(cheap_reply)
    raw = ask(sidecar)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from fake-anthropic"
    assert completion.choices[0].finish_reason == "stop"
    assert raw.headers["x-routemesh-backend"] == "anthropic"
    assert raw.headers["x-routemesh-model"] == "claude-3-5-haiku-latest"
    assert raw.headers["x-routemesh-attempts"] == "2"
    assert (cheap.count(), dear.count()) == (1, 1)
    assert dear.requests[0].json["model"] == "claude-3-5-haiku-latest"

    span, [first, second] = route_span(otlp)
    assert span.attributes["routemesh.cascade.outcome"] == "last_target"
    assert span.attributes["routemesh.cascade.tried"] == [
        "openai/gpt-4o-mini",
        "anthropic/claude-3-5-haiku-latest",
    ]
    assert span.attributes["routemesh.cascade.escalations"] == [f"openai/gpt-4o-mini: {reason}"]
    [(_, event)] = [e for e in span.events if e[0] == "routemesh.cascade.escalated"]
    assert event["routemesh.backend"] == "openai"
    assert event["routemesh.cascade.reasons"] == [reason]
    assert event["routemesh.cascade.finish_reason"] == finish
    assert span.status_code != 2, "the request succeeded"
    # The rejected attempt succeeded as far as the upstream goes: no error, but marked.
    assert first.attributes["routemesh.cascade.escalated"] is True
    assert first.attributes["routemesh.cascade.reasons"] == [reason]
    assert "error.type" not in first.attributes
    assert second.attributes["routemesh.backend"] == "anthropic"
    assert "routemesh.cascade.escalated" not in second.attributes

    # Both answers were paid for: the cost counts the rejected one too.
    usage = completion.usage
    assert usage is not None
    cheap_in = first.attributes["gen_ai.usage.input_tokens"]
    cheap_out = first.attributes["gen_ai.usage.output_tokens"]
    expected = (
        cheap_in * CHEAP_PRICES[0]
        + cheap_out * CHEAP_PRICES[1]
        + usage.prompt_tokens * DEAR_PRICES[0]
        + usage.completion_tokens * DEAR_PRICES[1]
    ) / 1e6
    assert float(raw.headers["x-routemesh-cost-usd"]) == pytest.approx(expected, abs=1e-8)


def test_when_the_dearer_model_fails_the_client_gets_the_cheap_answer_not_an_error(
    sidecar: SidecarThread, openai_upstream, anthropic_upstream, otlp: OTLPReceiver
):
    cheap, dear = openai_upstream[0], anthropic_upstream[0]
    cheap.script(Reply(text="Paris."))
    dear.script(Fail(529))
    raw = ask(sidecar)
    assert raw.parse().choices[0].message.content == "Paris."
    assert raw.headers["x-routemesh-backend"] == "openai"
    assert raw.headers["x-routemesh-attempts"] == "2"
    span, _ = route_span(otlp)
    assert span.attributes["routemesh.cascade.outcome"] == "rejected_kept"
    [(_, kept)] = [e for e in span.events if e[0] == "routemesh.cascade.kept"]
    assert kept["routemesh.cascade.cause"] == "overloaded"


def content_and_finish(chunks) -> list[tuple[str | None, str | None]]:
    return [(c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks if c.choices]


def test_a_streamed_cascade_sends_exactly_the_final_answers_chunks_and_none_of_the_rejected(
    sidecar: SidecarThread, openai_upstream, anthropic_upstream, otlp: OTLPReceiver
):
    cheap, dear = openai_upstream[0], anthropic_upstream[0]
    cheap.script(Reply(text=REFUSAL, chunks=6))
    headers, chunks = stream(sidecar)
    _, direct = stream(sidecar, model="dear")  # the dearer model's answer, without a cascade
    assert content_and_finish(chunks) == content_and_finish(direct)
    assert len(content_and_finish(chunks)) > 2, "relayed event by event"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from fake-anthropic"
    )
    assert not any("sorry" in (c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert headers["x-routemesh-backend"] == "anthropic"
    assert headers["x-routemesh-attempts"] == "2"
    assert cheap.count() == 1
    assert dear.count() == 2
    span = next(
        s
        for s in otlp.wait_for(lambda s: s.attributes.get("routemesh.route") == "free")
        if s.name == "routemesh.route"
    )
    assert span.attributes["routemesh.cascade.escalations"] == ["openai/gpt-4o-mini: refusal"]


def test_a_good_streamed_cheap_answer_is_buffered_then_sent_in_its_own_chunks(
    sidecar: SidecarThread, openai_upstream, anthropic_upstream
):
    cheap, dear = openai_upstream[0], anthropic_upstream[0]
    cheap.script(Reply(text=LONG, chunks=8))
    headers, chunks = stream(sidecar)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == LONG
    assert len(content_and_finish(chunks)) >= 8
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert headers["x-routemesh-backend"] == "openai"
    assert dear.count() == 0


def test_a_buffered_stream_that_breaks_fails_over_unseen(
    sidecar: SidecarThread, openai_upstream, anthropic_upstream, otlp: OTLPReceiver
):
    cheap, _dear = openai_upstream[0], anthropic_upstream[0]
    cheap.script(BreakStream(after_chunks=3))
    headers, chunks = stream(sidecar)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake-anthropic", "nothing of the broken stream reached the client"
    assert headers["x-routemesh-attempts"] == "2"
    span, [first, _] = route_span(otlp)
    assert first.attributes["error.type"] == "stream_broken"
    assert span.attributes["routemesh.fallback.cause"] == "stream_broken"
