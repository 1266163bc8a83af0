"""The Cascade strategy: the quality gate, reading answers, buffering streams, the attempt loop.

The gate and the answer readers are pure. The attempt loop runs on a virtual clock with the
upstream client replaced at its seam by one that answers from a script of whole answers; streams
are driven through a scripted upstream response, as the listener's relay would be.
"""

import asyncio
import contextlib
import json
import random
from collections.abc import Mapping
from typing import Any

import pytest

from routemesh_sidecar.protocol.answers import Answer, AnswerReader, answer_from_body
from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.routetable import QualityGate, Route
from routemesh_sidecar.telemetry.records import AttemptRecord
from routemesh_sidecar.upstream.cascade import (
    BufferedStream,
    UnsentStreamBroken,
    buffer_stream,
    is_refusal,
    judge,
)
from routemesh_sidecar.upstream.classify import UpstreamFailure
from routemesh_sidecar.upstream.client import (
    AttemptTarget,
    AttemptTimeouts,
    DownstreamCall,
    UpstreamReply,
    UpstreamStream,
)
from routemesh_sidecar.upstream.executor import Executor, Outcome, PlannedTarget, RequestFailed
from routemesh_sidecar.upstream.registry import HealthRegistry
from routemesh_testing.tables import backend, model_info, route

pytestmark = pytest.mark.timeout(10)

GATE = QualityGate(min_output_tokens=5, reject_refusals=True, require_complete=True)
CALL = DownstreamCall("openai", "chat", {"model": "m", "messages": []}, {})
GOOD = "Paris is the capital of France, and it has been for a long time."


# --- the gate -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I\u2019m sorry, I cannot assist with that request.",
        "Sorry, I can't do that.",
        "I cannot help with creating malware.",
        "I can't help with that.",
        "I'm not able to help with that.",
        "I am unable to provide that information.",
        "Unfortunately, I can't provide medical advice.",
        "I won't write that.",
        "I must decline this request.",
        "I apologize, but I cannot fulfill this request.",
        "As an AI language model, I cannot provide opinions on that.",
        "  **I can't help with that.**",
        "I'm not going to write that.",
        "I don't feel comfortable answering that.",
    ],
)
def test_refusal_openings_are_refusals(text: str):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "I'm sorry to hear that! Here is how to fix the leak.",
        "I can't wait to help: here is the plan.",
        "Sure. I can't browse the web, but here is what I know about it.",
        "I cannot stress enough how important backups are.",
        "Here is why I can't recommend that library: it is unmaintained.",
        "",
    ],
)
def test_helpful_answers_are_not_refusals(text: str):
    assert not is_refusal(text)


def test_a_good_answer_passes_the_gate():
    verdict = judge(GATE, Answer(GOOD, "stop"), Usage(10, 16, 0))
    assert verdict.accepted
    assert verdict.reasons == ()
    assert verdict.output_tokens == 16


def test_each_check_gives_its_reason_and_all_failures_are_listed():
    assert judge(GATE, Answer("Paris.", "stop"), Usage(10, 2, 0)).reasons == ("too_short",)
    assert judge(GATE, Answer(GOOD, "length"), Usage(10, 16, 0)).reasons == ("incomplete",)
    refused = judge(GATE, Answer("I'm sorry, but I can't help with that.", "stop"), Usage(1, 12))
    assert refused.reasons == ("refusal",)
    everything = judge(GATE, Answer("I can't help.", "length"), Usage(1, 3))
    assert everything.reasons == ("too_short", "refusal", "incomplete")


def test_refusals_flagged_by_the_api_count_whatever_the_text_says():
    assert "refusal" in judge(GATE, Answer(GOOD, "content_filter", refused=True), None).reasons
    assert judge(GATE, Answer(GOOD, "stop", refused=True), None).reasons == ("refusal",)


@pytest.mark.parametrize("finish", ["stop", "end_turn", "stop_sequence", "tool_calls", "tool_use"])
def test_finish_reasons_that_mean_finished_are_complete(finish: str):
    assert judge(GATE, Answer(GOOD, finish), Usage(1, 20)).accepted


@pytest.mark.parametrize("finish", ["length", "max_tokens", None, "something_new"])
def test_other_finish_reasons_are_incomplete(finish: str | None):
    assert judge(GATE, Answer(GOOD, finish), Usage(1, 20)).reasons == ("incomplete",)


def test_each_check_can_be_turned_off():
    lenient = QualityGate(min_output_tokens=0, reject_refusals=False, require_complete=False)
    assert judge(lenient, Answer("I can't help.", "length"), Usage(1, 0)).accepted


def test_without_usage_the_text_is_counted_and_a_tool_call_is_never_too_short():
    assert judge(GATE, Answer("x" * 20, "stop"), None).output_tokens == 5
    assert judge(GATE, Answer("x" * 16, "stop"), None).reasons == ("too_short",)
    assert judge(GATE, Answer("", "tool_calls", tool_calls=True), None).accepted


# --- reading answers ----------------------------------------------------------------------------


def test_an_openai_answer_is_read_from_its_body():
    body = {
        "choices": [{"message": {"content": GOOD, "refusal": None}, "finish_reason": "length"}],
        "usage": {"completion_tokens": 3},
    }
    assert answer_from_body("openai", json.dumps(body).encode()) == Answer(GOOD, "length")
    refusal = {
        "choices": [{"message": {"content": None, "refusal": "no"}, "finish_reason": "stop"}]
    }
    assert answer_from_body("openai", json.dumps(refusal).encode()).refused
    tools = {
        "choices": [
            {
                "message": {"content": None, "tool_calls": [{"id": "1"}]},
                "finish_reason": "tool_calls",
            }
        ]
    }
    assert answer_from_body("openai", json.dumps(tools).encode()).tool_calls


def test_an_anthropic_answer_is_read_from_its_body():
    body = {
        "content": [{"type": "text", "text": "Paris "}, {"type": "text", "text": "it is."}],
        "stop_reason": "max_tokens",
    }
    assert answer_from_body("anthropic", json.dumps(body).encode()) == Answer(
        "Paris it is.", "max_tokens"
    )
    refused = {"content": [], "stop_reason": "refusal"}
    assert answer_from_body("anthropic", json.dumps(refused).encode()).refused


def test_a_body_that_is_not_an_answer_reads_as_empty():
    assert answer_from_body("openai", b"not json") == Answer()
    assert answer_from_body("openai", b"[1, 2]") == Answer()


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data) if not isinstance(data, str) else data}\n\n".encode()


def openai_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def test_an_openai_stream_is_read_event_by_event_even_split_mid_event():
    stream = b"".join(
        [
            openai_chunk({"role": "assistant", "content": ""}),
            openai_chunk({"content": "Paris "}),
            openai_chunk({"content": "it is."}),
            openai_chunk({}, "stop"),
            sse("[DONE]"),
        ]
    )
    reader = AnswerReader("openai")
    for start in range(0, len(stream), 7):  # the network may split anywhere
        reader.feed(stream[start : start + 7])
    assert reader.answer() == Answer("Paris it is.", "stop")


def test_an_anthropic_stream_is_read_with_its_stop_reason():
    reader = AnswerReader("anthropic")
    for data, event in [
        ({"type": "message_start", "message": {}}, "message_start"),
        ({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}, None),
        ({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}}, "message_delta"),
        ({"type": "message_stop"}, "message_stop"),
    ]:
        reader.feed(sse(data, event))
    assert reader.answer() == Answer("Hi", "max_tokens")


# --- buffering a stream -------------------------------------------------------------------------

STREAM_CALL = DownstreamCall("openai", "chat", {"model": "m", "messages": [], "stream": True}, {})
B = backend("http://b/v1")
TARGET = AttemptTarget("b", B, B.endpoints[0], "m", model_info())


class Content:
    def __init__(self, chunks: list[bytes], hang: bool = False) -> None:
        self.chunks = chunks
        self.hang = hang

    async def readany(self) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.hang:
            await asyncio.Event().wait()
        return b""


class Response:
    def __init__(self, chunks: list[bytes], hang: bool = False) -> None:
        self.headers = {"content-type": "text/event-stream"}
        self.content = Content(chunks, hang)

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass

    def fail_at(self, when: float, error: BaseException) -> None:
        pass  # these streams end, break or are cancelled well before their deadline


async def stream_of(chunks: list[bytes], ended: list[Any], hang: bool = False) -> UpstreamStream:
    deadline = asyncio.get_running_loop().time() + 5
    stream = UpstreamStream(STREAM_CALL, TARGET, Response(chunks, hang), deadline)  # type: ignore[arg-type]
    stream.on_end = ended.append
    await stream.read_first_event()
    return stream


@pytest.mark.asyncio
async def test_a_buffered_stream_replays_exactly_what_the_relay_gave():
    chunks = [openai_chunk({"content": "Paris "}), openai_chunk({}, "length"), sse("[DONE]")]
    ended: list[Any] = []
    buffered = await buffer_stream(await stream_of(list(chunks), ended))
    assert ended == [None], "read to its end: health hears the stream was fine"
    assert buffered.answer == Answer("Paris ", "length")
    assert [data async for data in buffered.relay()] == chunks


@pytest.mark.asyncio
async def test_a_buffered_stream_that_breaks_is_a_failure_nobody_saw():
    ended: list[Any] = []
    stream = await stream_of([openai_chunk({"content": "Par"})], ended)
    with pytest.raises(UnsentStreamBroken) as broken:
        await buffer_stream(stream)
    assert broken.value.error_class == "stream_broken"
    assert ended == ["stream_broken"]


@pytest.mark.asyncio
async def test_a_stream_cancelled_while_buffered_is_not_the_upstreams_fault():
    ended: list[Any] = []
    stream = await stream_of([openai_chunk({"content": "Par"})], ended, hang=True)
    task = asyncio.ensure_future(buffer_stream(stream))
    await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert ended == [None]


# --- the attempt loop ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_800_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def reply(text: str, finish: str = "stop", tokens: int | None = None) -> UpstreamReply:
    body = {"choices": [{"index": 0, "message": {"content": text}, "finish_reason": finish}]}
    usage = Usage(10, tokens if tokens is not None else len(text.split()))
    return UpstreamReply(200, json.dumps(body).encode(), usage, "m")


class Answers:
    """Answers each backend's attempts from its script (a reply, or a failure to raise)."""

    def __init__(self, script: dict[str, list[UpstreamReply | UpstreamFailure]]) -> None:
        self.script = script
        self.calls: list[str] = []

    async def send(self, call, target: AttemptTarget, timeouts: AttemptTimeouts, trace_headers):
        self.calls.append(target.backend_name)
        answers = self.script[target.backend_name]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, UpstreamFailure):
            raise answer
        return answer


class Observer:
    def __init__(self) -> None:
        self.ended: list[AttemptRecord] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def attempt_started(self, record: AttemptRecord) -> Mapping[str, str]:
        return {}

    def attempt_ended(self, record: AttemptRecord) -> None:
        self.ended.append(record)

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        self.events.append((name, dict(attributes)))


def cascade_route(**fields: Any) -> Route:
    settings = {
        "strategy": "Cascade",
        "cascade": {"quality_gate": {"min_output_tokens": 5}},
        "retry": {"attempts": 2, "backoff": {"base": 0.1, "max": 1.0, "jitter": "None"}},
        **fields,
    }
    return route("r", ("cheap", "m"), ("dear", "m"), **settings)


async def run_cascade(
    script: dict[str, list[UpstreamReply | UpstreamFailure]],
    names: tuple[str, ...] = ("cheap", "dear"),
    r: Route | None = None,
) -> tuple[Answers, Observer, Outcome | RequestFailed]:
    r = r or cascade_route()
    clock = Clock()
    health = HealthRegistry(clock)
    plan = []
    for price, name in enumerate(names, start=1):
        b = backend(f"http://{name}/v1")
        info = model_info(input_price=price, output_price=4 * price)
        plan.append(PlannedTarget(name, b, "m", info, health.backend(name, b, r)))
    client = Answers(script)
    observer = Observer()
    executor = Executor(client, clock, random.Random(1), health, sleep=clock.sleep)  # type: ignore[arg-type]
    try:
        return client, observer, await executor.execute(CALL, plan, r, observer)
    except RequestFailed as failed:
        return client, observer, failed


def escalations(observer: Observer) -> list[dict[str, Any]]:
    return [a for name, a in observer.events if name == "routemesh.cascade.escalated"]


@pytest.mark.asyncio
async def test_a_good_cheap_answer_is_accepted_without_asking_the_dearer_target():
    client, observer, outcome = await run_cascade({"cheap": [reply(GOOD)], "dear": [reply(GOOD)]})
    assert isinstance(outcome, Outcome)
    assert client.calls == ["cheap"]
    assert outcome.target.backend_name == "cheap"
    assert outcome.cascade == "accepted"
    assert outcome.escalations == []
    assert escalations(observer) == []


@pytest.mark.parametrize(
    ("cheap", "reasons", "finish"),
    [
        (reply("Paris."), ["too_short"], "stop"),
        (reply(GOOD, finish="length"), ["incomplete"], "length"),
        (reply("I'm sorry, but I can't help with that request at all."), ["refusal"], "stop"),
    ],
)
@pytest.mark.asyncio
async def test_a_weak_cheap_answer_escalates_and_the_dearer_answer_is_returned(
    cheap: UpstreamReply, reasons: list[str], finish: str
):
    dear = reply("The dearer model's answer, long enough to pass.")
    client, observer, outcome = await run_cascade({"cheap": [cheap], "dear": [dear]})
    assert isinstance(outcome, Outcome)
    assert client.calls == ["cheap", "dear"], "a rejected answer is never retried"
    assert outcome.result is dear
    assert outcome.cascade == "last_target"
    [escalation] = outcome.escalations
    assert escalation.label == "cheap/m"
    assert list(escalation.verdict.reasons) == reasons
    assert outcome.discarded == [escalation], "the downstream never saw it, but it was paid for"
    [event] = escalations(observer)
    assert event["routemesh.backend"] == "cheap"
    assert event["routemesh.cascade.reasons"] == reasons
    assert event["routemesh.cascade.finish_reason"] == finish
    first = outcome.attempts[0]
    assert first.escalation == tuple(reasons)
    assert first.error_class is None
    assert first in observer.ended, "the escalated attempt's span is closed at once"


@pytest.mark.asyncio
async def test_the_last_targets_answer_is_returned_whatever_it_is():
    refusal = reply("I'm sorry, but I can't help with that request at all.")
    _, observer, outcome = await run_cascade({"cheap": [reply("No.")], "dear": [refusal]})
    assert isinstance(outcome, Outcome)
    assert outcome.result is refusal
    assert outcome.cascade == "last_target"
    assert len(escalations(observer)) == 1, "only the cheap answer was judged"


@pytest.mark.asyncio
async def test_a_middle_target_that_passes_ends_the_cascade():
    script: dict[str, list[Any]] = {
        "cheap": [reply("No.")],
        "middle": [reply(GOOD)],
        "dear": [reply(GOOD)],
    }
    r = route(
        "r",
        ("cheap", "m"),
        ("middle", "m"),
        ("dear", "m"),
        strategy="Cascade",
        cascade={"quality_gate": {"min_output_tokens": 5}},
    )
    client, _, outcome = await run_cascade(script, ("cheap", "middle", "dear"), r)
    assert isinstance(outcome, Outcome)
    assert client.calls == ["cheap", "middle"]
    assert outcome.target.backend_name == "middle"
    assert outcome.cascade == "accepted"
    assert [e.label for e in outcome.escalations] == ["cheap/m"]


@pytest.mark.asyncio
async def test_failures_still_retry_and_fall_back_as_for_any_route():
    failure = UpstreamFailure("server_error", "boom", status=500)
    client, _, outcome = await run_cascade({"cheap": [failure], "dear": [reply(GOOD)]})
    assert isinstance(outcome, Outcome)
    assert client.calls == ["cheap", "cheap", "dear"], "two attempts on the cheap, then the dear"
    assert outcome.cascade == "last_target"
    assert outcome.escalations == []
    assert [a.error_class for a in outcome.attempts] == ["server_error", "server_error", None]


@pytest.mark.asyncio
async def test_a_client_error_does_not_fall_back_in_a_cascade_either():
    failure = UpstreamFailure("client_error", "bad request", status=400)
    client, _, failed = await run_cascade({"cheap": [failure], "dear": [reply(GOOD)]})
    assert isinstance(failed, RequestFailed)
    assert client.calls == ["cheap"]


@pytest.mark.asyncio
async def test_when_every_dearer_target_fails_the_rejected_answer_beats_an_error():
    short = reply("Paris.")
    failure = UpstreamFailure("overloaded", "busy", status=503)
    client, observer, outcome = await run_cascade({"cheap": [short], "dear": [failure]})
    assert isinstance(outcome, Outcome)
    assert client.calls == ["cheap", "dear", "dear"]
    assert outcome.result is short
    assert outcome.cascade == "rejected_kept"
    assert outcome.discarded == [], "the kept answer is the one the downstream gets"
    kept = [a for name, a in observer.events if name == "routemesh.cascade.kept"]
    assert kept == [
        {
            "routemesh.backend": "cheap",
            "routemesh.model": "m",
            "routemesh.cascade.cause": "overloaded",
        }
    ]


@pytest.mark.asyncio
async def test_a_route_of_another_strategy_never_judges_answers():
    r = route("r", ("cheap", "m"), ("dear", "m"), retry={"attempts": 1})
    client, observer, outcome = await run_cascade({"cheap": [reply("No.")], "dear": []}, r=r)
    assert isinstance(outcome, Outcome)
    assert client.calls == ["cheap"]
    assert outcome.cascade is None
    assert observer.events == []


def test_a_buffered_stream_looks_like_a_stream_to_the_listener():
    buffered = BufferedStream([b"a", b"b"], Usage(1, 2), "m", Answer("ab", "stop"))
    buffered.abandon()  # nothing to free, and no error
    assert buffered.usage == Usage(1, 2)
