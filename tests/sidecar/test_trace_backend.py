"""The sidecar's traces in a real OTel backend: a sidecar process exports, Phoenix stores them.

The sidecar runs as a process with its production exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`, no
test span processor), so this proves that a real backend accepts what the sidecar itself encodes.
Every assertion reads the backend's REST API, as a person's query in its UI would.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from routemesh_testing.fakes import OPENAI_KEY
from routemesh_testing.faultproxy import FaultyUpstream, Status
from routemesh_testing.phoenix import PhoenixServer, project_resource
from routemesh_testing.sidecar import SidecarProcess, write_table
from routemesh_testing.tables import backend, route, table

pytestmark = pytest.mark.timeout(120)

CHAT = "/chat/completions"


@pytest.fixture
def flaky() -> Iterator[FaultyUpstream]:
    with FaultyUpstream("flaky", OPENAI_KEY) as upstream:
        upstream.faults.set_fault(Status(503), paths=(CHAT,))
        yield upstream


@pytest.fixture
def steady() -> Iterator[FaultyUpstream]:
    with FaultyUpstream("steady", OPENAI_KEY) as upstream:
        yield upstream


def sidecar_env(trace_backend: PhoenixServer, project: str) -> dict[str, str]:
    return {
        **os.environ,
        "OPENAI_KEY": OPENAI_KEY,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "OTEL_EXPORTER_OTLP_ENDPOINT": trace_backend.otlp_endpoint,
        "OTEL_SERVICE_NAME": "chat-sidecar",
        "OTEL_RESOURCE_ATTRIBUTES": project_resource(project),
    }


def test_a_failover_request_reaches_the_backend_as_a_route_span_and_two_attempt_spans(
    workdir: Path, trace_backend: PhoenixServer, flaky: FaultyUpstream, steady: FaultyUpstream
):
    project = f"failover-{secrets.token_hex(4)}"
    path = workdir / "table.json"
    write_table(
        path,
        table(
            {
                "flaky": backend(flaky.url, key_env="OPENAI_KEY"),
                "steady": backend(steady.url, key_env="OPENAI_KEY"),
            },
            route("chat", ("flaky", "m"), ("steady", "m"), retry={"attempts": 1}),
        ),
    )
    with (
        SidecarProcess(path, sidecar_env(trace_backend, project), workdir / "sc.log") as sidecar,
        openai.OpenAI(base_url=sidecar.base_url + "/v1", api_key="app", max_retries=0) as client,
    ):
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hello"}]
        )
        assert raw.parse().choices[0].message.content == "Hello from steady"
        assert raw.headers["x-routemesh-attempts"] == "2"
        [route_span] = trace_backend.wait_for(
            project, lambda spans: len(spans) == 1, name="routemesh.route"
        )
        trace_id = route_span["context"]["trace_id"]
        spans = trace_backend.wait_for(project, lambda spans: len(spans) == 3)

    assert {s["context"]["trace_id"] for s in spans} == {trace_id}, "one trace per decision"
    decision = route_span["attributes"]  # Phoenix answers with flat, typed, dotted keys
    assert decision["routemesh.route"] == "chat"
    assert decision["routemesh.strategy"] == "Fallback"
    assert decision["routemesh.candidates"] == ["flaky/m", "steady/m"]
    assert decision["routemesh.backend"] == "steady"
    assert decision["routemesh.attempts"] == 2
    assert decision["routemesh.fallback.cause"] == "overloaded"
    assert decision["routemesh.cost.usd"] > 0
    assert route_span["parent_id"] is None
    assert route_span["status_code"] != "ERROR"

    attempts = sorted(
        (s for s in spans if s["parent_id"] == route_span["context"]["span_id"]),
        key=lambda s: s["attributes"]["routemesh.attempt.index"],
    )
    assert [a["attributes"]["routemesh.backend"] for a in attempts] == ["flaky", "steady"]
    for attempt in attempts:
        assert attempt["name"] == "chat m"
        assert attempt["attributes"]["gen_ai.operation.name"] == "chat"
        assert attempt["attributes"]["gen_ai.provider.name"] == "openai"
        assert attempt["attributes"]["gen_ai.request.model"] == "m"
    failed, served = attempts
    assert failed["status_code"] == "ERROR"
    assert failed["attributes"]["error.type"] == "overloaded"
    assert failed["attributes"]["http.response.status_code"] == 503
    assert "gen_ai.usage.input_tokens" not in failed["attributes"]
    assert served["status_code"] != "ERROR"
    assert "error.type" not in served["attributes"]
    assert served["attributes"]["gen_ai.usage.input_tokens"] == 17
    assert served["attributes"]["gen_ai.usage.output_tokens"] == 3
    assert served["attributes"]["gen_ai.response.model"] == "m"
    assert flaky.faults.received(CHAT) == 1
    assert steady.faults.received(CHAT) == 1
