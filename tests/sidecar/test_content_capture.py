"""Content capture through the sidecar, with the official client and a fake provider.

Prompts and completions reach the spans only when the route table opts in, on the attempt that
answered, as the GenAI conventions name them.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import SpanProcessor

from routemesh_testing.otlp import OTLPReceiver, ReceivedSpan
from routemesh_testing.sidecar import SidecarThread
from routemesh_testing.tables import backend, route, table

SECRET_PROMPT = "my account number is 1234-5678"


def run_sidecar(workdir, upstream_url, span_processor, variables, capture: bool) -> SidecarThread:
    routes = table(
        {"up": backend(upstream_url, key_env="OPENAI_KEY")},
        route("chat", ("up", "m")),
        telemetry={"capture_content": capture},
    )
    return SidecarThread(routes, workdir, span_processor=span_processor, variables=variables)


@pytest.fixture(params=[True, False], ids=["captured", "default"])
def sidecar(
    request, workdir: Path, openai_upstream, span_processor: SpanProcessor, variables
) -> Iterator[tuple[SidecarThread, bool]]:
    with run_sidecar(workdir, openai_upstream[1], span_processor, variables, request.param) as s:
        yield s, request.param


def answering_attempt(otlp: OTLPReceiver) -> ReceivedSpan:
    route_span = max(otlp.wait_for(lambda s: s.name == "routemesh.route"), key=lambda s: s.start_ns)
    (attempt,) = otlp.wait_for(lambda s: s.parent_span_id == route_span.span_id)
    return attempt


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_prompts_and_completions_are_recorded_only_when_the_policy_opts_in(
    sidecar: tuple[SidecarThread, bool], otlp: OTLPReceiver, openai_upstream, stream: bool
):
    s, captured = sidecar
    otlp.clear()
    with openai.OpenAI(base_url=s.openai_base_url, api_key="app", max_retries=0) as client:
        messages: Any = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": SECRET_PROMPT},
        ]
        text: str | None
        if stream:
            text = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(
                    model="m", messages=messages, stream=True
                )
                if chunk.choices
            )
        else:
            text = (
                client.chat.completions.create(model="m", messages=messages)
                .choices[0]
                .message.content
            )
    assert text == "Hello from fake-openai"
    attempt = answering_attempt(otlp)
    if not captured:
        for span in otlp.spans:
            assert not any(
                key.startswith(("gen_ai.input", "gen_ai.output")) for key in span.attributes
            )
            assert SECRET_PROMPT not in json.dumps(span.attributes, default=str)
        return
    inputs = json.loads(attempt.attributes["gen_ai.input.messages"])
    assert inputs == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": SECRET_PROMPT}]},
    ]
    (output,) = json.loads(attempt.attributes["gen_ai.output.messages"])
    assert output["role"] == "assistant"
    assert output["parts"] == [{"type": "text", "content": "Hello from fake-openai"}]
    assert output["finish_reason"] == "stop"
    assert "routemesh.content.truncated" not in attempt.attributes
