"""Hedging through the sidecar, with the official client and fake providers.

The primary is slow to its first byte; the route hedges to the spare after 200 ms. The fake
provider watches its connections, so the test sees the loser's closed before it finished.
"""

import time

import openai
import pytest

from routemesh_testing.fakes import Delay, FakeOpenAI, StreamStall
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.sidecar import SidecarThread, StartSidecar
from routemesh_testing.tables import backend, route, table

SETTINGS = {
    "retry": {"attempts": 1},
    "timeouts": {"connect": 1, "first_token": 10, "total": 1.5},
    "hedging": {"delay": 0.2},
}


@pytest.fixture
def sidecar(
    openai_upstream: tuple[FakeOpenAI, str],
    openai_spare: tuple[FakeOpenAI, str],
    start_sidecar: StartSidecar,
) -> SidecarThread:
    backends = {
        "primary": backend(openai_upstream[1], key_env="OPENAI_KEY"),
        "spare": backend(openai_spare[1], key_env="OPENAI_KEY"),
    }
    routes = table(backends, route("chat", ("primary", "m"), ("spare", "m"), **SETTINGS))
    return start_sidecar(routes)


def client(sidecar: SidecarThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.openai_base_url, api_key="app", max_retries=0, timeout=10)


def wait_for(condition, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_hedge_wins_against_a_slow_primary_whose_connection_is_closed(
    sidecar: SidecarThread, openai_upstream, openai_spare, otlp: OTLPReceiver
):
    primary, spare = openai_upstream[0], openai_spare[0]
    otlp.clear()
    primary.always(Delay(5.0))
    started = time.monotonic()
    with client(sidecar) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    elapsed = time.monotonic() - started
    assert raw.parse().choices[0].message.content == "Hello from fake-openai-spare"
    assert raw.headers["x-routemesh-backend"] == "spare"
    assert elapsed < 1.0, f"the hedge answered, not the 5 s primary ({elapsed:.2f}s)"
    assert wait_for(lambda: len(primary.abandoned) == 1), "the provider saw the loser leave"
    assert spare.count() == 1
    route_span = max(otlp.wait_for(lambda s: s.name == "routemesh.route"), key=lambda s: s.start_ns)
    names = [name for name, _ in route_span.events]
    assert "routemesh.hedge.started" in names
    assert "routemesh.hedge.won" in names
    attempts = otlp.wait_for(lambda s: s.parent_span_id == route_span.span_id, timeout=5)
    by_backend = {a.attributes["routemesh.backend"]: a for a in attempts}
    assert by_backend["primary"].attributes["routemesh.attempt.cancelled"] is True
    assert by_backend["primary"].status_code != 2, "a cancelled loser is no error"
    assert by_backend["spare"].attributes["routemesh.attempt.hedge"] is True
    hedges = {"backend": "spare", "model": "m", "outcome": "ok"}
    assert sidecar.metric("routemesh_hedges_total", **hedges) == 1
    cancelled = {"backend": "primary", "model": "m", "outcome": "cancelled"}
    assert sidecar.metric("routemesh_attempts_total", **cancelled) == 1


def test_a_stream_that_sent_its_first_byte_is_never_hedged(
    sidecar: SidecarThread, openai_upstream, openai_spare
):
    primary, spare = openai_upstream[0], openai_spare[0]
    primary.always(StreamStall(after_chunks=1))  # a first chunk at once, then nothing
    received: list[str] = []

    def read_stream() -> None:
        with client(sidecar) as c:
            stream = c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            received.extend(
                chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
            )

    with pytest.raises(openai.APIError):
        read_stream()
    assert received, "the first chunk arrived, then the total timeout ended the stream"
    assert spare.count() == 0, "after the first byte there is no hedge"
