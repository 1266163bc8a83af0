"""The body sent upstream: the downstream's bytes when nothing must change, a new body otherwise."""

import json

import pytest

from routemesh_sidecar.routetable import Api
from routemesh_sidecar.upstream.client import AttemptTarget, DownstreamCall, upstream_bytes
from routemesh_testing.tables import backend, model_info

pytestmark = pytest.mark.timeout(10)

# Spacing and key order a re-encoding would not keep: proof that the bytes went through as sent.
RAW = b'{ "messages": [{"role": "user", "content": "hi"}],   "model": "m" }'


def target(api: str = "openai", model: str = "m") -> AttemptTarget:
    info = model_info()
    chosen = backend("http://upstream/v1", api=api, models={model: info})
    return AttemptTarget("b", chosen, chosen.endpoints[0], model, info)


def call(raw: bytes = RAW, api: Api = "openai") -> DownstreamCall:
    return DownstreamCall(api, "chat", json.loads(raw), {}, raw)


def test_same_api_and_model_sends_the_downstream_bytes_unchanged():
    assert upstream_bytes(call(), target()) is RAW


def test_another_model_gets_a_new_body_naming_it():
    sent = json.loads(upstream_bytes(call(), target(model="bigger")))
    assert sent == {"messages": [{"role": "user", "content": "hi"}], "model": "bigger"}


def test_a_stream_asks_upstream_for_usage():
    raw = b'{"model": "m", "messages": [], "stream": true}'
    sent = json.loads(upstream_bytes(call(raw), target()))
    assert sent["stream_options"] == {"include_usage": True}


def test_another_api_gets_a_translated_body():
    sent = json.loads(upstream_bytes(call(), target(api="anthropic")))
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert sent["max_tokens"] > 0


def test_a_call_without_raw_bytes_is_encoded():
    bare = DownstreamCall("openai", "chat", {"model": "m", "messages": []}, {})
    assert json.loads(upstream_bytes(bare, target())) == {"model": "m", "messages": []}
