"""The pydantic API models: every example parses and round-trips; what the models refuse."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from routemesh_operator.api.v1alpha1 import ModelBackend, RoutingPolicy
from routemesh_operator.api.v1alpha1.common import parse_duration

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
MODELS: dict[str, Any] = {"RoutingPolicy": RoutingPolicy, "ModelBackend": ModelBackend}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_there_are_examples_for_each_scenario_the_docs_promise():
    names = {path.stem for path in EXAMPLES}
    assert {
        "cost-saving-router",
        "multi-provider-failover",
        "self-hosted-vllm",
        "canary-split",
        "tiered-free-paid",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_parses_and_dumps_back_unchanged(path: Path):
    docs = documents(path)
    assert {doc["kind"] for doc in docs} == {"RoutingPolicy", "ModelBackend"}
    for doc in docs:
        parsed = MODELS[doc["kind"]].model_validate(doc)
        assert parsed.model_dump(by_alias=True, exclude_none=True) == doc


def minimal_backend(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": "b"},
        "spec": {
            "provider": "OpenAI",
            "endpoint": {"url": "https://api.openai.com/v1"},
            "credentials": {"secretRef": {"name": "s", "key": "k"}},
            "models": [
                {
                    "name": "m",
                    "contextWindow": 1000,
                    "qualityTier": "Economy",
                    "pricing": {"inputPerMillion": "1", "outputPerMillion": "2"},
                }
            ],
            **spec,
        },
    }


def test_an_inline_api_key_is_refused_as_an_unknown_field():
    doc = minimal_backend(credentials={"apiKey": "sk-secret"})
    with pytest.raises(ValidationError) as refused:
        ModelBackend.model_validate(doc)
    assert "apiKey" in str(refused.value)
    assert "Extra inputs are not permitted" in str(refused.value)


def test_a_price_that_is_not_a_decimal_string_is_refused():
    doc = minimal_backend()
    doc["spec"]["models"][0]["pricing"]["inputPerMillion"] = "-1"
    with pytest.raises(ValidationError, match="inputPerMillion"):
        ModelBackend.model_validate(doc)


def test_absent_fields_stay_absent_rather_than_taking_defaults():
    parsed = ModelBackend.model_validate(minimal_backend())
    assert parsed.spec.health_check is None
    assert parsed.spec.models[0].capabilities is None
    assert parsed.model_dump(by_alias=True, exclude_none=True) == minimal_backend()


def test_models_are_immutable():
    parsed = ModelBackend.model_validate(minimal_backend())
    with pytest.raises(ValidationError):
        parsed.spec.provider = "Anthropic"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("1h2m3s4ms", 3723.004)],
)
def test_durations_parse_like_go_durations(text: str, seconds: float):
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)
