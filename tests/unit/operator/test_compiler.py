"""The pure compiler: examples compile, invalid setups get their reason, versions are stable."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from routemesh_operator.api.v1alpha1 import ModelBackend, RoutingPolicy
from routemesh_operator.compiler.compile import CompileResult, compile_namespace
from routemesh_operator.compiler.inputs import ReadyAddress, Snapshot
from routemesh_sidecar import routetable as wire
from routemesh_sidecar.routetable import RouteTable, parse_route_table

pytestmark = pytest.mark.timeout(30)

EXAMPLES = Path(__file__).parents[3] / "examples"
NAMESPACE = "apps"


def example(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((EXAMPLES / f"{name}.yaml").read_text()) if doc]


def snapshot(
    docs: list[dict[str, Any]],
    *,
    secrets: set[tuple[str, str]] | None = None,
    addresses: Mapping[tuple[str, int], tuple[ReadyAddress, ...]] | None = None,
) -> Snapshot:
    for index, doc in enumerate(docs):
        doc["metadata"].setdefault("generation", 1)
        doc["metadata"].setdefault("creationTimestamp", f"2026-11-30T00:00:{index:02d}Z")
    backends = tuple(ModelBackend.model_validate(d) for d in docs if d["kind"] == "ModelBackend")
    if secrets is None:
        secrets = {
            (b.spec.credentials.secret_ref.name, b.spec.credentials.secret_ref.key)
            for b in backends
            if b.spec.credentials
        }
    return Snapshot(
        namespace=NAMESPACE,
        policies=tuple(
            RoutingPolicy.model_validate(d) for d in docs if d["kind"] == "RoutingPolicy"
        ),
        backends=backends,
        secret_keys=frozenset(secrets),
        service_addresses=addresses or {},
    )


def only_table(result: CompileResult) -> RouteTable:
    (outcome,) = result.policies.values()
    assert outcome.not_accepted == []
    assert outcome.unresolved == []
    assert outcome.table is not None
    return outcome.table


def reasons(result: CompileResult, policy: str) -> list[str]:
    outcome = result.policies[policy]
    assert outcome.table is None, "a policy with a problem must get no table"
    return [p.reason for p in outcome.not_accepted + outcome.unresolved]


def test_failover_example_compiles_with_defaults_merged_and_credentials_as_files():
    table = only_table(compile_namespace(snapshot(example("multi-provider-failover"))))
    assert table.version == 1
    assert table.sources[0].name == "failover"
    assert table.sources[0].namespace == NAMESPACE
    (route,) = table.routes
    assert [(t.backend, t.model) for t in route.targets] == [
        ("openai", "gpt-4o"),
        ("anthropic", "claude-sonnet-4-5"),
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ]
    assert route.retry.attempts == 2
    assert route.retry.per_try_timeout == 20
    assert route.retry.backoff.base == pytest.approx(0.2)
    assert route.retry.budget.percent == 20
    assert route.timeouts.connect == 2
    assert route.timeouts.total == 60
    assert route.circuit_breaker.half_open_probes == 2
    assert route.outlier_detection.panic_threshold_percent == 30
    assert table.backends["anthropic"].api == "anthropic"
    assert table.backends["openai"].credentials is not None
    assert str(table.backends["openai"].credentials.file).endswith("/openai-api-key/api-key")
    assert "sk-" not in table.model_dump_json()
    # The wire format round-trips: the sidecar parses what the compiler produced.
    assert parse_route_table(table.model_dump_json()) == table


def test_a_route_setting_replaces_the_default_of_the_same_name_as_a_whole():
    docs = example("multi-provider-failover")
    policy = docs[-1]
    policy["spec"]["routes"][0]["retry"] = {"attempts": 4}
    table = only_table(compile_namespace(snapshot(docs)))
    retry = table.routes[0].retry
    assert retry.attempts == 4
    # Not merged field by field with the default's 20s per-try timeout and 200ms backoff.
    assert retry.per_try_timeout is None
    assert retry.backoff.base == pytest.approx(0.1)


def test_canary_example_keeps_weights():
    table = only_table(compile_namespace(snapshot(example("canary-split"))))
    split = next(r for r in table.routes if r.name == "split")
    assert split.strategy == "Weighted"
    assert sorted(t.weight for t in split.targets if t.weight is not None) == [10, 90]


def test_self_hosted_backend_balances_over_the_ready_pods_of_its_service():
    addresses = {
        ("llama-8b", 8000): (
            ReadyAddress("10.0.0.12", 8000, "europe-west4-b"),
            ReadyAddress("10.0.0.11", 8000, "europe-west4-a"),
        )
    }
    docs = example("self-hosted-vllm")
    result = compile_namespace(snapshot(docs, addresses=addresses))
    table = only_table(result)
    llama = table.backends["llama-8b"]
    assert [(e.url, e.zone) for e in llama.endpoints] == [
        ("http://10.0.0.11:8000/v1", "europe-west4-a"),
        ("http://10.0.0.12:8000/v1", "europe-west4-b"),
    ]
    assert llama.health_check is not None
    assert llama.health_check.metrics is not None
    assert llama.health_check.interval == 5
    assert llama.health_check.metrics.stale_after == 15
    # The shadow route is compiled for the sidecars to evaluate, not noted as ignored.
    assert table.shadow is not None
    assert [r.name for r in table.shadow.routes] == ["chat-by-score"]
    assert table.shadow.routes[0].strategy == "ScoreBased"
    assert not any("shadow" in note for note in result.policies["self-hosted-first"].notes)


def test_self_hosted_backend_without_ready_pods_leaves_the_policy_unresolved():
    result = compile_namespace(snapshot(example("self-hosted-vllm")))
    assert result.backends["llama-8b"] is not None
    assert result.backends["llama-8b"].reason == "NoReadyEndpoints"
    # The live route and the shadow route both need it; each says so.
    assert reasons(result, "self-hosted-first") == ["BackendNotResolved", "BackendNotResolved"]
    live, shadow = result.policies["self-hosted-first"].unresolved
    assert "no ready endpoints" in live.message
    assert shadow.message.startswith("shadow route 'chat-by-score'")


def test_an_in_cluster_service_backend_uses_its_scheme_prefix_and_ipv6_brackets():
    backend = {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": "local"},
        "spec": {
            "provider": "OpenAICompatible",
            "endpoint": {"service": {"name": "gateway", "port": 443, "scheme": "https"}},
            "models": [
                {
                    "name": "m",
                    "contextWindow": 8192,
                    "pricing": {"inputPerMillion": "0", "outputPerMillion": "0"},
                    "qualityTier": "Standard",
                }
            ],
        },
    }
    policy = {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "p"},
        "spec": {
            "selector": {},
            "routes": [
                {
                    "name": "r",
                    "strategy": {"type": "Fallback"},
                    "targets": [{"backend": "local", "model": "m"}],
                }
            ],
        },
    }
    addresses = {("gateway", 443): (ReadyAddress("fd00::1", 8443),)}
    table = only_table(compile_namespace(snapshot([backend, policy], addresses=addresses)))
    assert table.backends["local"].endpoints[0].url == "https://[fd00::1]:8443/v1"


def test_versions_are_content_addressed():
    docs = example("multi-provider-failover")
    first = only_table(compile_namespace(snapshot(copy.deepcopy(docs))))
    again = compile_namespace(snapshot(copy.deepcopy(docs)), previous={"failover": first})
    assert only_table(again) is first  # same content: same table, same version
    docs[-1]["spec"]["routes"][0]["timeouts"] = {"total": "90s"}
    docs[-1]["metadata"]["generation"] = 2
    changed = only_table(compile_namespace(snapshot(docs), previous={"failover": first}))
    assert changed.version == 2
    assert changed.content_hash != first.content_hash
    assert changed.sources[0].generation == 2


# --- semantically invalid setups: each gets its reason and never a table -----------------------


def _mutate_failover(change: Any) -> CompileResult:
    docs = example("multi-provider-failover")
    secrets = {(d["spec"]["credentials"]["secretRef"]["name"], "api-key") for d in docs[:-1]}
    change(docs)
    return compile_namespace(snapshot(docs, secrets=secrets))


def _target(docs: list[dict[str, Any]], index: int) -> dict[str, Any]:
    return docs[-1]["spec"]["routes"][0]["targets"][index]


INVALID: dict[str, tuple[Any, str, str]] = {
    "missing backend": (
        lambda docs: _target(docs, 0).update(backend="openia"),
        "BackendNotFound",
        "'openia' does not exist",
    ),
    "model not served": (
        lambda docs: _target(docs, 1).update(model="claude-9"),
        "ModelNotServed",
        "does not serve model 'claude-9'",
    ),
    "backend with a missing Secret": (
        lambda docs: docs[0]["spec"]["credentials"]["secretRef"].update(key="token"),
        "BackendNotResolved",
        "Secret 'openai-api-key' with key 'token' does not exist",
    ),
    "a target that cannot read images": (
        lambda docs: docs[-1]["spec"]["routes"][0]["match"].update(
            signals={"modalities": ["Image"]}
        ),
        "CapabilityMissing",
        "together/meta-llama/Llama-3.3-70B-Instruct-Turbo cannot read images",
    ),
    "a target whose context window is too small": (
        lambda docs: docs[-1]["spec"]["routes"][0]["match"].update(
            signals={"tokens": {"min": 130000}}
        ),
        "ContextWindowTooSmall",
        "openai/gpt-4o has a context window of 128000 tokens",
    ),
    "a route after a catch-all": (
        lambda docs: docs[-1]["spec"]["routes"].insert(
            0, {**docs[-1]["spec"]["routes"][0], "name": "everything", "match": {}}
        ),
        "RouteUnreachable",
        "route 'everything' matches every request",
    ),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_setup_is_reported_with_its_reason_and_gets_no_table(case: str):
    change, reason, message = INVALID[case]
    result = _mutate_failover(change)
    assert reason in reasons(result, "failover")
    outcome = result.policies["failover"]
    assert any(message in p.message for p in outcome.not_accepted + outcome.unresolved)


def test_missing_secret_is_reported_on_the_backend_itself():
    result = compile_namespace(snapshot(example("multi-provider-failover"), secrets=set()))
    problem = result.backends["openai"]
    assert problem is not None
    assert problem.reason == "SecretNotFound"
    assert "create it" in problem.message


def test_the_tiered_example_compiles_its_cascade_with_the_quality_gate_on_the_wire():
    table = only_table(compile_namespace(snapshot(example("tiered-free-paid"))))
    paid, free = table.routes
    assert paid.strategy == "Fastest"
    assert paid.cascade is None
    assert free.strategy == "Cascade"
    assert [(t.backend, t.model) for t in free.targets] == [
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-3-5-haiku-latest"),
    ], "cheapest first, as declared"
    assert free.cascade == wire.Cascade(
        quality_gate=wire.QualityGate(
            min_output_tokens=20, reject_refusals=True, require_complete=True
        )
    )
    on_the_wire = parse_route_table(table.model_dump_json())
    assert on_the_wire == table
    assert on_the_wire.routes[1].quality_gate == free.cascade.quality_gate


def test_a_cascade_without_settings_gets_the_default_gate_written_out():
    docs = example("tiered-free-paid")
    free = docs[-1]["spec"]["routes"][1]
    del free["strategy"]["cascade"]
    table = only_table(compile_namespace(snapshot(docs)))
    assert table.routes[1].cascade == wire.Cascade(
        quality_gate=wire.QualityGate(
            min_output_tokens=1, reject_refusals=True, require_complete=True
        )
    )
    free["strategy"]["cascade"] = {"qualityGate": {"rejectRefusals": False}}
    gate = only_table(compile_namespace(snapshot(docs))).routes[1].quality_gate
    assert gate == wire.QualityGate(
        min_output_tokens=1, reject_refusals=False, require_complete=True
    )


def test_the_cost_saving_example_compiles_its_categories_onto_the_wire():
    table = only_table(compile_namespace(snapshot(example("cost-saving-router"))))
    code, reasoning, default = table.routes
    assert code.match.signals.code_present is True
    assert code.match.signals.categories == ()
    [category] = reasoning.match.signals.categories
    assert category.name == "reasoning"
    assert category.threshold == 0.6
    assert category.examples == (
        "Work through this step by step and explain your reasoning.",
        "Prove that the sum of two even numbers is even.",
        "Compare these three plans and tell me which is best and why.",
    )
    assert default.match.signals.required is False
    dumped = json.loads(table.model_dump_json())
    assert dumped["routes"][1]["match"]["signals"]["categories"][0]["threshold"] == 0.6
    assert "categories" not in dumped["routes"][0]["match"]["signals"], "left out when unused"
    assert parse_route_table(table.model_dump_json()) == table


def test_a_category_without_a_threshold_gets_one_half():
    docs = example("cost-saving-router")
    del docs[-1]["spec"]["routes"][1]["match"]["signals"]["categories"][0]["threshold"]
    table = only_table(compile_namespace(snapshot(docs)))
    assert table.routes[1].match.signals.categories[0].threshold == 0.5


def test_a_table_without_cascades_or_categories_dumps_as_before():
    """Older sidecars refuse unknown fields: a table that uses neither new feature omits them."""
    table = only_table(compile_namespace(snapshot(example("multi-provider-failover"))))
    text = table.model_dump_json()
    assert '"cascade"' not in text
    assert '"categories"' not in text


def test_a_cascade_that_escalates_to_a_cheaper_model_is_refused():
    docs = example("tiered-free-paid")
    free = docs[-1]["spec"]["routes"][1]
    free["targets"].reverse()  # sonnet-class haiku first, then the cheaper gpt-4o-mini
    result = compile_namespace(snapshot(docs))
    assert "CascadeNotEscalating" in reasons(result, "tiered")
    message = next(
        p.message
        for p in result.policies["tiered"].not_accepted
        if p.reason == "CascadeNotEscalating"
    )
    assert "'gpt-4o-mini' costs less than 'claude-3-5-haiku-latest'" in message


def _two_policies(selector_a: dict[str, Any], selector_b: dict[str, Any]) -> CompileResult:
    docs = example("canary-split")
    second = copy.deepcopy(docs[-1])
    second["metadata"]["name"] = "canary-2"
    docs[-1]["spec"]["selector"] = selector_a
    second["spec"]["selector"] = selector_b
    return compile_namespace(snapshot([*docs, second]))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({}, {"matchLabels": {"app": "x"}}),
        ({"matchLabels": {"app": "x"}}, {"matchLabels": {"tier": "web"}}),
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["x", "y"]}]},
            {"matchLabels": {"app": "y"}},
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
            {"matchLabels": {"app": "z"}},
        ),
    ],
)
def test_overlapping_selectors_refuse_the_newer_policy(a: dict[str, Any], b: dict[str, Any]):
    result = _two_policies(a, b)
    assert result.policies["canary"].table is not None  # the older one keeps working
    assert reasons(result, "canary-2") == ["SelectorOverlap"]
    assert "'canary'" in result.policies["canary-2"].not_accepted[0].message


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"matchLabels": {"app": "x"}}, {"matchLabels": {"app": "y"}}),
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["x", "y"]}]},
            {"matchLabels": {"app": "z"}},
        ),
        (
            {"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]},
            {"matchLabels": {"canary": "yes"}},
        ),
    ],
)
def test_disjoint_selectors_both_get_tables(a: dict[str, Any], b: dict[str, Any]):
    result = _two_policies(a, b)
    assert result.policies["canary"].table is not None
    assert result.policies["canary-2"].table is not None


def test_a_problem_in_one_policy_does_not_hold_back_another():
    good = example("canary-split")
    bad = copy.deepcopy(good[-1])
    bad["metadata"]["name"] = "broken"
    bad["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    good[-1]["spec"]["selector"] = {"matchLabels": {"app": "web"}}
    bad["spec"]["routes"][0]["targets"][0]["backend"] = "nope"
    result = compile_namespace(snapshot([*good, bad]))
    assert result.policies["canary"].table is not None
    assert reasons(result, "broken") == ["BackendNotFound"]


def test_a_table_carries_only_the_backends_its_routes_use():
    docs = example("multi-provider-failover")
    docs[-1]["spec"]["routes"][0]["targets"] = docs[-1]["spec"]["routes"][0]["targets"][:1]
    del docs[-1]["spec"]["routes"][0]["contentPolicyFallbacks"]  # they use a backend too
    table = only_table(compile_namespace(snapshot(docs)))
    assert set(table.backends) == {"openai"}


def test_budgets_compile_onto_their_routes_and_no_note_says_they_are_ignored():
    result = compile_namespace(snapshot(example("tiered-free-paid")))
    table = only_table(result)
    assert table.tier_header == "x-user-tier"
    paid, free = table.routes
    assert paid.budget is not None  # the policy's default budget
    paid_latency = paid.budget.tier_latency("paid")
    assert paid_latency is not None
    assert (paid_latency.first_token, paid_latency.total) == (2.0, 60.0)
    assert paid.budget.max_cost_usd is None
    # The free route's own budget replaces the default as a whole.
    assert free.budget is not None
    assert (free.budget.max_cost_usd, free.budget.max_tokens) == (0.005, 32000)
    assert free.budget.tier_latency("paid") is None
    free_latency = free.budget.tier_latency("free")
    assert free_latency is not None
    assert free_latency.first_token == 10.0
    assert not any("budget" in note for note in result.policies["tiered"].notes)

    cost = only_table(compile_namespace(snapshot(example("cost-saving-router"))))
    default = next(r for r in cost.routes if r.name == "default")
    assert default.budget == wire.Budget(max_cost_usd=0.02)
    assert all(r.budget is None for r in cost.routes if r.name != "default")


def test_a_table_without_budgets_serializes_as_before_they_existed():
    table = only_table(compile_namespace(snapshot(example("canary-split"))))
    assert all("budget" not in route for route in json.loads(table.model_dump_json())["routes"])


def _private(docs: list[dict[str, Any]], **privacy: Any) -> list[dict[str, Any]]:
    policy = next(d for d in docs if d["kind"] == "RoutingPolicy")
    policy["spec"]["privacy"] = privacy
    return docs


def test_a_retention_level_compiles_onto_every_route_with_each_backends_level():
    # The failover example: openai retains Limited, anthropic and together declare nothing.
    docs = _private(
        example("multi-provider-failover"), retention="Limited", requestHeader="X-Retention"
    )
    result = compile_namespace(snapshot(docs))
    table = only_table(result)
    (route,) = table.routes
    assert route.retention == "Limited"
    assert route.retention_header == "x-retention"
    assert table.backends["openai"].retention == "Limited"
    assert table.backends["anthropic"].retention is None  # undeclared: counts as Standard
    (note,) = [n for n in result.policies["failover"].notes if "retention" in n]
    assert "anthropic (Standard)" in note
    assert "together (Standard)" in note


def test_a_route_whose_required_retention_no_target_meets_is_refused_with_its_fix():
    docs = _private(example("multi-provider-failover"), retention="None")
    result = compile_namespace(snapshot(docs))
    assert reasons(result, "failover") == ["RetentionNotMet"]
    (problem,) = result.policies["failover"].not_accepted
    assert "openai retains Limited" in problem.message
    assert "spec.dataPolicy.retention None" in problem.message


def test_a_route_may_require_a_stricter_level_than_its_policy_never_a_looser_one():
    docs = _private(example("multi-provider-failover"), retention="Limited")
    policy = next(d for d in docs if d["kind"] == "RoutingPolicy")
    policy["spec"]["routes"][0]["privacy"] = {"retention": "Standard"}
    (route,) = only_table(compile_namespace(snapshot(docs))).routes
    assert route.retention == "Limited"
    policy["spec"]["routes"][0]["privacy"] = {"retention": "None"}
    assert reasons(compile_namespace(snapshot(docs)), "failover") == ["RetentionNotMet"]


def test_content_policy_fallbacks_compile_with_their_backends_and_unknown_ones_are_unresolved():
    docs = example("multi-provider-failover")
    policy = next(d for d in docs if d["kind"] == "RoutingPolicy")
    route = policy["spec"]["routes"][0]
    route["targets"] = [route["targets"][0]]  # openai only: the fallback's backend is extra
    route["contentPolicyFallbacks"] = [
        {"backend": "together", "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo"}
    ]
    table = only_table(compile_namespace(snapshot(docs)))
    (compiled,) = table.routes
    assert [(t.backend, t.model) for t in compiled.content_policy_fallbacks] == [
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo")
    ]
    assert "together" in table.backends, "a fallback's backend travels with the table"
    route["contentPolicyFallbacks"] = [{"backend": "nowhere", "model": "m"}]
    assert reasons(compile_namespace(snapshot(docs)), "failover") == ["BackendNotFound"]
    route["contentPolicyFallbacks"] = [{"backend": "together", "model": "gpt-5"}]
    assert reasons(compile_namespace(snapshot(docs)), "failover") == ["ModelNotServed"]


def test_hedging_compiles_onto_routes_and_no_note_says_it_is_ignored():
    result = compile_namespace(snapshot(example("multi-provider-failover")))
    (route,) = only_table(result).routes
    assert route.hedging == wire.Hedging(delay=3.0, max_extra_attempts=1)
    assert not any("hedg" in note for note in result.policies["failover"].notes)
    docs = example("multi-provider-failover")
    docs[-1]["spec"]["defaults"]["hedging"] = {"delay": "500ms", "delayPercentile": 95}
    (route,) = only_table(compile_namespace(snapshot(docs))).routes
    assert route.hedging == wire.Hedging(delay=0.5, delay_percentile=95)
