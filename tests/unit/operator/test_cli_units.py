"""The CLI's parts that need no cluster: the dry run, the cost window and the argument checks."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from routemesh_operator.cli import errors
from routemesh_operator.cli.errors import CliError
from routemesh_operator.cli.explain import ExplainRequest, explain
from routemesh_operator.cli.main import main, parser
from routemesh_operator.cli.sidecars import cost_window
from routemesh_testing.models import static_model, transformer_model
from routemesh_testing.serving import ServerThread
from routemesh_testing.tables import backend, model_info, route, table

pytestmark = pytest.mark.timeout(30)


def two_routes() -> str:
    routes = table(
        {
            "cheap": backend("http://127.0.0.1:9/v1", models={"m": model_info(input_price=0.1)}),
            "strong": backend("http://127.0.0.1:9/v1", models={"m": model_info(input_price=5)}),
        },
        route(
            "code",
            ("strong", "m"),
            ("cheap", "m"),
            match={"signals": {"code_present": True}},
        ),
        route("rest", ("cheap", "m"), ("strong", "m"), strategy="CheapestCapable"),
        version=7,
    )
    return routes.model_dump_json()


@pytest.mark.parametrize(
    ("prompt", "route_name", "first"),
    [
        ("", "rest", "cheap/m"),
        ("x" * 200_000, "rest", "cheap/m"),
        ("Quelle est la capitale de la France ?", "rest", "cheap/m"),
        ("fix this:\n```python\nprint(1/0)\n```", "code", "strong/m"),
    ],
    ids=["empty", "200k-characters", "french", "code"],
)
def test_explain_takes_the_route_and_plan_a_sidecar_would(prompt: str, route_name: str, first: str):
    explained = explain(two_routes(), ExplainRequest(model="m", prompt=prompt))
    assert explained["route"] == route_name
    assert explained["decision"]["target"] == first
    assert explained["signals"]["promptTokens"] >= len(prompt) // 4


def test_explain_refuses_a_body_the_sidecar_would_refuse_and_a_table_it_cannot_load():
    with pytest.raises(CliError) as refused:
        explain(two_routes(), ExplainRequest(model="m", body={"messages": "not a list"}))
    assert refused.value.code == errors.USAGE
    assert "the sidecar would refuse this request" in refused.value.message
    with pytest.raises(CliError) as unloadable:
        explain(json.dumps({"version": "x"}), ExplainRequest(model="m", prompt="hi"))
    assert unloadable.value.code == errors.FINDING


def test_an_anthropic_request_gets_the_max_tokens_its_api_requires():
    explained = explain(two_routes(), ExplainRequest(model="m", prompt="hi", api="anthropic"))
    assert explained["request"]["api"] == "anthropic"
    assert explained["decision"]["target"] == "cheap/m"


def test_the_cost_window_is_what_the_counters_grew_by_in_between():
    samples = iter(["0.25", "0.75"])

    async def metrics(_: web.Request) -> web.Response:
        value = next(samples)
        text = (
            "# TYPE routemesh_cost_usd counter\n"
            'routemesh_cost_usd_total{policy="p",route="chat",backend="b",model="m",tier=""} '
            f"{value}\n"
            "# TYPE routemesh_tokens counter\n"
            'routemesh_tokens_total{backend="b",model="m",kind="input"} 10\n'
        )
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    slept: list[float] = []
    with ServerThread(app) as server:
        report = cost_window([server.url], 60, sleep=slept.append)
    assert slept == [60]
    assert report["costUsd"] == [{"route": "chat", "backend": "b", "tier": "", "usd": 0.5}]
    assert report["tokens"] == [], "no token was counted in the window"


def test_a_negative_window_is_a_usage_error(capsys: pytest.CaptureFixture[str]):
    assert main(["cost", "--sidecar", "http://127.0.0.1:9", "--window", "-1"]) == errors.USAGE
    assert "--window cannot be negative" in capsys.readouterr().err


def test_a_body_file_that_is_not_json_is_refused_before_the_cluster_is_asked(tmp_path, capsys):
    body = tmp_path / "body.json"
    body.write_text("{not json")
    code = main(["explain", "p", "--body-file", str(body), "--kubeconfig", str(tmp_path / "none")])
    assert code == errors.USAGE
    assert f"--body-file {body}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["-o", "json", "--kubeconfig", "/k", "-n", "ns", "--context", "c", "status"],
        ["status", "-o", "json", "--kubeconfig", "/k", "-n", "ns", "--context", "c"],
        ["--kubeconfig", "/k", "--context", "c", "status", "-o", "json", "-n", "ns"],
    ],
    ids=["before", "after", "both"],
)
def test_the_common_flags_count_before_and_after_the_command(argv: list[str]):
    args = parser().parse_args(argv)
    assert (args.output, args.kubeconfig, args.namespace, args.context) == ("json", "/k", "ns", "c")


def semantic_table(tier: str = "Static") -> str:
    category = {
        "name": "cooking",
        "examples": ["Give me a recipe for lasagna", "How long should I boil an egg?"],
        "threshold": 0.4,
    }
    built = table(
        {"b": backend("http://127.0.0.1:9/v1")},
        route("cooking", ("b", "m"), match={"signals": {"categories": [category]}}),
        route("rest", ("b", "m")),
        category_matching={"tier": tier, "method": "Centroid"},
    )
    return built.model_dump_json()


def test_explain_runs_the_transformer_model_the_sidecar_is_configured_with(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTEMESH_SIDECAR_TRANSFORMER_MODEL", str(transformer_model()))
    request = ExplainRequest(model="m", prompt="What should I cook for dinner with chicken?")
    assert explain(semantic_table("Transformer"), request)["route"] == "cooking"
    monkeypatch.setenv("ROUTEMESH_SIDECAR_TRANSFORMER_MODEL", str(tmp_path / "absent.onnx"))
    with pytest.raises(CliError) as refused:
        explain(semantic_table("Transformer"), request)
    assert "ROUTEMESH_SIDECAR_TRANSFORMER_MODEL" in refused.value.message


def test_explain_classifies_with_the_tables_embedding_tier(monkeypatch):
    monkeypatch.setenv("ROUTEMESH_SIDECAR_STATIC_MODEL", str(static_model()))
    request = ExplainRequest(model="m", prompt="What should I cook for dinner with chicken?")
    assert explain(semantic_table(), request)["route"] == "cooking"
    assert (
        explain(semantic_table(), ExplainRequest(model="m", prompt="Who won in 1998?"))["route"]
        == "rest"
    )


def test_explain_without_the_tiers_model_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTEMESH_SIDECAR_STATIC_MODEL", str(tmp_path / "absent.npz"))
    with pytest.raises(CliError) as refused:
        explain(semantic_table(), ExplainRequest(model="m", prompt="hi"))
    assert refused.value.code == errors.USAGE
    assert "cannot classify like the sidecar would" in refused.value.message
    assert "ROUTEMESH_SIDECAR_STATIC_MODEL" in refused.value.message


def learned_table() -> str:
    built = table(
        {"b": backend("http://127.0.0.1:9/v1")},
        route("hard", ("b", "m"), match={"signals": {"learned_router": {"strong_share": 0.3}}}),
        route("rest", ("b", "m")),
    )
    return built.model_dump_json()


@pytest.mark.parametrize(
    ("prompt", "route_name"),
    [
        ("Write a Python function that parses this log file and fix the bug:\ndef f(x):\n", "hard"),
        ("Write a short, warm thank-you note to my neighbour for watering my plants.", "rest"),
    ],
)
def test_explain_shows_the_learned_routers_score(prompt: str, route_name: str):
    explained = explain(learned_table(), ExplainRequest(model="m", prompt=prompt))
    assert explained["route"] == route_name
    assert 0 < explained["signals"]["learnedRouterScore"] <= 1


def test_explain_scores_only_when_a_route_reads_the_learned_router():
    explained = explain(two_routes(), ExplainRequest(model="m", prompt="hello"))
    assert explained["signals"]["learnedRouterScore"] is None
