"""The official OpenAI and Anthropic SDKs against the sidecar, in front of fake providers.

Sync and async clients, streaming and not, tool calls, and translation both ways. Each test also
checks what the upstream received: the sidecar's key (never the app's) and the target's model.
"""

import anthropic
import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam

from routemesh_testing.fakes import ANTHROPIC_KEY, OPENAI_KEY, FakeAnthropic, FakeOpenAI, Reply
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.sidecar import SidecarThread, StartSidecar
from routemesh_testing.tables import backend, model_info, route, table

APP_KEY = "sk-app-key-that-must-never-leave-the-pod"
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


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
                    "claude-sonnet-4-5": model_info(200_000, input_price=3.0, output_price=15.0)
                },
                key_env="ANTHROPIC_KEY",
            ),
        },
        route("to-openai", ("openai", "gpt-4o-mini"), match={"models": ["gpt-4o", "gpt-4o-mini"]}),
        route(
            "to-anthropic",
            ("anthropic", "claude-sonnet-4-5"),
            match={"models": ["claude", "smart"]},
        ),
    )
    return start_sidecar(routes)


def openai_client(sidecar: SidecarThread) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=sidecar.openai_base_url, api_key=APP_KEY, max_retries=0, timeout=10
    )


def anthropic_client(sidecar: SidecarThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=10
    )


def test_openai_sync_chat_reaches_the_openai_backend_with_the_sidecars_key(
    sidecar: SidecarThread, openai_upstream: tuple[FakeOpenAI, str], otlp: OTLPReceiver
):
    fake, _ = openai_upstream
    with openai_client(sidecar) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from fake-openai"
    assert raw.headers["x-routemesh-route"] == "to-openai"
    assert raw.headers["x-routemesh-backend"] == "openai"
    assert raw.headers["x-routemesh-model"] == "gpt-4o-mini"
    assert raw.headers["x-routemesh-attempts"] == "1"
    usage = completion.usage
    assert usage is not None
    expected_cost = (usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.6) / 1e6
    assert float(raw.headers["x-routemesh-cost-usd"]) == pytest.approx(expected_cost, abs=1e-8)

    [received] = fake.requests
    assert received.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert APP_KEY not in str(dict(received.headers))
    assert received.json["model"] == "gpt-4o-mini"

    [span] = otlp.wait_for(
        lambda s: s.name == "routemesh.route" and s.attributes.get("routemesh.route") == "to-openai"
    )
    assert span.attributes["routemesh.backend"] == "openai"
    assert span.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    [attempt] = otlp.wait_for(lambda s: s.parent_span_id == span.span_id)
    assert attempt.name == "chat gpt-4o-mini"
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens


@pytest.mark.asyncio
async def test_openai_async_stream_relays_chunks_and_usage(sidecar: SidecarThread):
    client = openai.AsyncOpenAI(base_url=sidecar.openai_base_url, api_key=APP_KEY, max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake-openai"
    assert len([c for c in chunks if c.choices]) > 1, "relayed chunk by chunk"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_openai_stream_without_usage_request_gets_no_usage_chunk_but_is_still_accounted(
    sidecar: SidecarThread, openai_upstream: tuple[FakeOpenAI, str], otlp: OTLPReceiver
):
    fake, _ = openai_upstream
    with openai_client(sidecar) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "count"}], stream=True
            )
        )
    assert all(c.choices for c in chunks), "no usage-only chunk the app did not ask for"
    assert fake.requests[-1].json["stream_options"] == {"include_usage": True}
    [span] = otlp.wait_for(
        lambda s: s.name == "routemesh.route" and "gen_ai.usage.output_tokens" in s.attributes
    )
    assert span.attributes["gen_ai.usage.output_tokens"] > 0


def test_openai_tool_calls_pass_through(
    sidecar: SidecarThread, openai_upstream: tuple[FakeOpenAI, str]
):
    fake, _ = openai_upstream
    fake.script(
        Reply(tool_call=("get_weather", {"city": "Paris"})),
        Reply(tool_call=("get_weather", {"city": "Oslo"})),
    )
    with openai_client(sidecar) as client:
        whole = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL]
        )
        with client.chat.completions.stream(
            model="gpt-4o", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL]
        ) as stream:
            streamed = stream.get_final_completion()
    [call] = whole.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    [streamed_call] = streamed.choices[0].message.tool_calls or []
    assert streamed_call.type == "function"
    assert streamed_call.function.name == "get_weather"
    assert streamed_call.function.arguments.replace(" ", "") == '{"city":"Oslo"}'


def test_openai_client_to_anthropic_backend_is_translated_both_ways(
    sidecar: SidecarThread, anthropic_upstream: tuple[FakeAnthropic, str]
):
    fake, _ = anthropic_upstream
    fake.script(Reply(), Reply(tool_call=("get_weather", {"city": "Rome"})), Reply())
    with openai_client(sidecar) as client:
        whole = client.chat.completions.create(
            model="smart",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            max_tokens=50,
        )
        tools = client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL]
        )
        chunks = list(
            client.chat.completions.create(
                model="smart",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert whole.choices[0].message.content == "Hello from fake-anthropic"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert whole.usage.completion_tokens > 0
    first = fake.requests[0]
    assert first.headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in first.headers
    assert first.json["system"] in ("be brief", [{"type": "text", "text": "be brief"}])
    assert first.json["max_tokens"] == 50
    assert first.json["model"] == "claude-sonnet-4-5"

    [call] = tools.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert tools.choices[0].finish_reason == "tool_calls"
    assert fake.requests[1].json["tools"][0]["name"] == "get_weather"

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake-anthropic"
    assert chunks[-1].usage is not None


def test_anthropic_client_pass_through_and_stream(
    sidecar: SidecarThread, anthropic_upstream: tuple[FakeAnthropic, str]
):
    fake, _ = anthropic_upstream
    with anthropic_client(sidecar) as client:
        message = client.messages.create(
            model="claude", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        with client.messages.stream(
            model="claude", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = stream.get_final_message()
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from fake-anthropic"
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello from fake-anthropic"
    assert final.usage.output_tokens > 0
    assert all(r.headers["x-api-key"] == ANTHROPIC_KEY for r in fake.requests)
    assert all(r.headers["anthropic-version"] for r in fake.requests)


@pytest.mark.asyncio
async def test_anthropic_async_client_to_openai_backend_with_tools(
    sidecar: SidecarThread, openai_upstream: tuple[FakeOpenAI, str]
):
    fake, _ = openai_upstream
    fake.script(Reply(tool_call=("get_weather", {"city": "Lima"})), Reply())
    tool = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}
    async with anthropic.AsyncAnthropic(
        base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0
    ) as client:
        message = await client.messages.create(
            model="gpt-4o",
            max_tokens=100,
            tools=[tool],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "weather?"}],
        )
        async with client.messages.stream(
            model="gpt-4o", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = await stream.get_final_message()
    tool_use = [block for block in message.content if block.type == "tool_use"]
    assert tool_use[0].name == "get_weather"
    assert tool_use[0].input == {"city": "Lima"}
    assert message.stop_reason == "tool_use"
    assert fake.requests[0].json["tools"][0]["function"]["name"] == "get_weather"
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello from fake-openai"


def test_models_embeddings_and_completions(sidecar: SidecarThread):
    with openai_client(sidecar) as client:
        models = {m.id for m in client.models.list()}
        embedding = client.embeddings.create(model="gpt-4o-mini", input=["a", "b"])
        completion = client.completions.create(model="gpt-4o-mini", prompt="Say hi")
    assert {"gpt-4o", "gpt-4o-mini", "claude", "smart", "claude-sonnet-4-5"} <= models
    assert len(embedding.data) == 2
    assert completion.choices[0].text
