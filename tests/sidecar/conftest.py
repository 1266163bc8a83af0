"""Fixtures for tests of a whole sidecar in front of fake providers.

Each fake is a real HTTP server on 127.0.0.1; the sidecar runs on its own event loop thread with
seeded randomness and a span processor that exports over OTLP/HTTP to a real receiver, so a
test asserts on what the client saw and on what the trace recorded.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from routemesh_testing.fakes import ANTHROPIC_KEY, OPENAI_KEY, FakeAnthropic, FakeOpenAI
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.serving import ServerThread
from routemesh_testing.sidecar import SidecarThread, StartSidecar


@pytest.fixture(scope="session")
def otlp() -> Iterator[OTLPReceiver]:
    receiver = OTLPReceiver()
    with ServerThread(receiver.app) as server:
        receiver.bind(server)
        yield receiver


@pytest.fixture(autouse=True)
def fresh_spans(otlp: OTLPReceiver) -> None:
    """Each test sees only its own spans."""
    otlp.clear()


@pytest.fixture
def span_processor(otlp: OTLPReceiver) -> Iterator[SpanProcessor]:
    # Simple (synchronous) export: a span is at the receiver when the request returns.
    processor = SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp.endpoint))
    yield processor
    processor.shutdown()


@pytest.fixture
def openai_upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI(name="fake-openai", api_key=OPENAI_KEY)
    with ServerThread(fake.app) as server:
        yield fake, server.url + "/v1"


@pytest.fixture
def openai_spare() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI(name="fake-openai-spare", api_key=OPENAI_KEY)
    with ServerThread(fake.app) as server:
        yield fake, server.url + "/v1"


@pytest.fixture
def anthropic_upstream() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic(name="fake-anthropic", api_key=ANTHROPIC_KEY)
    with ServerThread(fake.app) as server:
        yield fake, server.url + "/v1"


@pytest.fixture
def variables() -> dict[str, str]:
    return {"OPENAI_KEY": OPENAI_KEY, "ANTHROPIC_KEY": ANTHROPIC_KEY}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def start_sidecar(
    workdir: Path, span_processor: SpanProcessor, variables: dict[str, str]
) -> Iterator[StartSidecar]:
    """Start sidecars on route tables, exporting to the receiver with the fakes' keys.

    Each stops when the test ends.
    """
    with contextlib.ExitStack() as running:

        def start(routes: Any, **settings: Any) -> SidecarThread:
            sidecar = SidecarThread(
                routes, workdir, span_processor=span_processor, variables=variables, **settings
            )
            return running.enter_context(sidecar)

        yield start
