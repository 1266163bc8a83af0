"""RoutingPolicy and ModelBackend CRDs on the real API server.

The examples apply and read back unchanged; plainly invalid resources are refused at
`kubectl apply` with a message that names the problem; `kubectl explain` and `kubectl get` show
what the generated CRDs promise.
"""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from routemesh_testing.kubectl import Kubectl, KubectlError

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
DELETE = object()


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_applies_and_reads_back_equal(kubectl: Kubectl, namespace: str, path: Path):
    kubectl.apply(path.read_text(), namespace=namespace)
    for doc in documents(path):
        stored = kubectl.get(doc["kind"].lower(), doc["metadata"]["name"], namespace=namespace)
        assert stored["spec"] == doc["spec"], f"{doc['kind']} {doc['metadata']['name']} changed"
        assert "status" not in stored, "the API server must not default anything into status"


def valid_backend() -> dict[str, Any]:
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": "backend"},
        "spec": {
            "provider": "OpenAI",
            "endpoint": {"url": "https://api.openai.com/v1"},
            "credentials": {"secretRef": {"name": "openai", "key": "api-key"}},
            "models": [
                {
                    "name": "gpt-4o-mini",
                    "contextWindow": 128000,
                    "capabilities": ["Tools"],
                    "pricing": {"inputPerMillion": "0.15", "outputPerMillion": "0.60"},
                    "qualityTier": "Economy",
                }
            ],
            "healthCheck": {"interval": "10s", "timeout": "2s"},
        },
    }


def valid_vllm_backend() -> dict[str, Any]:
    backend = valid_backend()
    spec = backend["spec"]
    del spec["endpoint"], spec["credentials"]
    spec["provider"] = "VLLM"
    spec["models"][0]["name"] = "llama"
    spec["selfHosted"] = {
        "image": "vllm/vllm-openai:v0.6.4",
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "servedModelName": "llama",
        "replicas": 1,
        "gpu": {"count": 1},
    }
    return backend


def valid_policy() -> dict[str, Any]:
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "policy"},
        "spec": {
            "selector": {},
            "defaults": {
                "timeouts": {"connect": "2s", "firstToken": "10s", "total": "60s"},
                "retry": {"attempts": 2, "backoff": {"baseInterval": "100ms", "maxInterval": "1s"}},
                "outlierDetection": {"maxEjectedPercent": 50},
                "circuitBreaker": {"consecutiveFailures": 5, "halfOpenProbes": 1},
            },
            "routes": [
                {
                    "name": "split",
                    "strategy": {"type": "Weighted"},
                    "targets": [
                        {"backend": "a", "model": "m", "weight": 80},
                        {"backend": "b", "model": "m", "weight": 20},
                    ],
                },
                {
                    "name": "cheap-first",
                    "match": {"signals": {"tokens": {"min": 0, "max": 1000}}},
                    "strategy": {"type": "Cascade"},
                    "targets": [{"backend": "a", "model": "m"}, {"backend": "b", "model": "m"}],
                },
            ],
            "telemetry": {"samplingRatio": "0.1"},
        },
    }


def changed(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `doc` with the dotted `path` set, deleted, or (one past a list's end) appended."""
    doc = copy.deepcopy(doc)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    node: Any = doc
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list) and last == len(node):
        node.append(value)
    else:
        node[last] = value
    return doc


SCORE_BASED = {
    "name": "scored",
    "strategy": {"type": "ScoreBased"},
    "targets": [{"backend": "a", "model": "m"}],
}

# Each case: one change that makes a valid resource plainly invalid, and the words the
# refusal must contain (the field path and what is wrong with it).
INVALID = [
    # RoutingPolicy: the schema
    pytest.param(
        changed(valid_policy(), "spec.defaults.timeouts.total", "ten seconds"),
        ["spec.defaults.timeouts.total", "should match"],
        id="timeout-not-a-duration",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.1.name", "split"),
        ["spec.routes[1]", "Duplicate value", "split"],
        id="duplicate-route-names",
    ),
    pytest.param(
        changed(valid_policy(), "spec.defaults.outlierDetection.maxEjectedPercent", 150),
        ["spec.defaults.outlierDetection.maxEjectedPercent", "less than or equal to 100"],
        id="probe-percentage-over-100",
    ),
    pytest.param(
        changed(valid_policy(), "spec.defaults.circuitBreaker.halfOpenProbes", 0),
        ["spec.defaults.circuitBreaker.halfOpenProbes", "greater than or equal to 1"],
        id="zero-half-open-probes",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.0.strategy.type", "RoundRobin"),
        ["spec.routes[0].strategy.type", 'Unsupported value: "RoundRobin"'],
        id="unknown-strategy",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.0.retires", {"attempts": 3}),
        ['unknown field "spec.routes[0].retires"'],
        id="misspelt-field",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes", []),
        ["spec.routes", "at least 1 items"],
        id="no-routes",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.0.name", "Split Route"),
        ["spec.routes[0].name", "should match"],
        id="route-name-not-dns-label",
    ),
    pytest.param(
        changed(valid_policy(), "spec.telemetry.samplingRatio", "1.5"),
        ["spec.telemetry.samplingRatio", "should match"],
        id="sampling-ratio-over-1",
    ),
    pytest.param(
        changed(valid_policy(), "spec.selector", DELETE),
        ["spec.selector", "Required value"],
        id="no-selector",
    ),
    # RoutingPolicy: CEL rules
    pytest.param(
        changed(valid_policy(), "spec.categoryMatching", {"method": "Centroid"}),
        ["spec.categoryMatching", "need tier Static or Transformer"],
        id="centroid-with-the-lexical-tier",
    ),
    pytest.param(
        changed(valid_policy(), "spec.categoryMatching", {"lexicalWeight": "0.5"}),
        ["spec.categoryMatching", "lexicalWeight blends the Lexical tier into a model tier"],
        id="lexical-weight-with-the-lexical-tier",
    ),
    pytest.param(
        changed(
            valid_policy(),
            "spec.categoryMatching",
            {"tier": "Transformer", "lexicalWeight": "1.5"},
        ),
        ["spec.categoryMatching.lexicalWeight", "should match"],
        id="lexical-weight-over-1",
    ),
    pytest.param(
        changed(valid_policy(), "spec.categoryMatching", {"tier": "Static", "k": 4}),
        ["spec.categoryMatching", "k is read only with method NearestExamples"],
        id="k-without-nearest-examples",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.0.targets.1.weight", 30),
        ["spec.routes[0].targets", "weights must add up to 100"],
        id="weights-not-100",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.0.targets.1.weight", DELETE),
        ["spec.routes[0].targets", "needs a weight on every target"],
        id="weighted-target-without-weight",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.1.targets.0.weight", 50),
        ["spec.routes[1].targets", "only used by the Weighted strategy"],
        id="weight-on-a-cascade",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.1.targets", [{"backend": "a", "model": "m"}]),
        ["spec.routes[1].targets", "Cascade route needs at least two targets"],
        id="cascade-with-one-target",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.1.targets.1", {"backend": "a", "model": "m"}),
        ["spec.routes[1].targets", "each backend and model may appear only once"],
        id="duplicate-target",
    ),
    pytest.param(
        changed(valid_policy(), "spec.defaults.timeouts.connect", "2m"),
        ["spec.defaults.timeouts", "timeouts.connect must not exceed timeouts.total"],
        id="connect-longer-than-total",
    ),
    pytest.param(
        changed(valid_policy(), "spec.defaults.retry.backoff.baseInterval", "5s"),
        ["spec.defaults.retry.backoff", "baseInterval must not exceed backoff.maxInterval"],
        id="backoff-base-above-max",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.1.match.signals.tokens.min", 5000),
        ["spec.routes[1].match.signals.tokens", "tokens.min must not exceed tokens.max"],
        id="token-range-inverted",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.1.match.signals.turns", {"min": 5, "max": 2}),
        ["spec.routes[1].match.signals.turns", "turns.min must not exceed turns.max"],
        id="turn-range-inverted",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.1.match.signals.languages", ["english"]),
        ["spec.routes[1].match.signals.languages[0]", "Unsupported value"],
        id="unknown-language",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes.1.match.signals.learnedRouter", {"strongShare": "0"}),
        [
            "spec.routes[1].match.signals.learnedRouter",
            "learnedRouter.strongShare must be above 0",
        ],
        id="learned-router-share-zero",
    ),
    pytest.param(
        changed(valid_policy(), "spec.routes", [SCORE_BASED]),
        ["spec.routes[0].strategy", "strategy.score is required for type ScoreBased"],
        id="score-based-without-weights",
    ),
    # ModelBackend: the schema
    pytest.param(
        changed(valid_backend(), "spec.credentials", {"apiKey": "sk-live-123"}),
        ['unknown field "spec.credentials.apiKey"'],
        id="inline-api-key",
    ),
    pytest.param(
        changed(valid_backend(), "spec.models.0.pricing.inputPerMillion", "-1"),
        ["spec.models[0].pricing.inputPerMillion", "should match"],
        id="negative-price",
    ),
    pytest.param(
        changed(valid_backend(), "spec.models.0.capabilities", ["Telepathy"]),
        ["spec.models[0].capabilities[0]", 'Unsupported value: "Telepathy"'],
        id="unknown-capability",
    ),
    pytest.param(
        changed(valid_backend(), "spec.models.1", valid_backend()["spec"]["models"][0]),
        ["spec.models[1]", "Duplicate value", "gpt-4o-mini"],
        id="duplicate-model",
    ),
    pytest.param(
        changed(valid_backend(), "spec.models.0.qualityTier", DELETE),
        ["spec.models[0].qualityTier", "Required value"],
        id="model-without-quality-tier",
    ),
    pytest.param(
        changed(valid_backend(), "spec.endpoint.url", "api.openai.com/v1"),
        ["spec.endpoint.url", "should match"],
        id="url-without-scheme",
    ),
    # ModelBackend: CEL rules
    pytest.param(
        changed(valid_backend(), "spec.endpoint.service", {"name": "llm", "port": 80}),
        ["spec.endpoint", "set exactly one of endpoint.url and endpoint.service"],
        id="url-and-service",
    ),
    pytest.param(
        changed(valid_backend(), "spec.endpoint", DELETE),
        ["spec", "endpoint is required unless the provider is VLLM"],
        id="provider-without-endpoint",
    ),
    pytest.param(
        changed(valid_backend(), "spec.credentials", DELETE),
        ["spec", "OpenAI and Anthropic backends need credentials.secretRef"],
        id="openai-without-credentials",
    ),
    pytest.param(
        changed(valid_backend(), "spec.healthCheck.timeout", "10s"),
        ["spec.healthCheck", "healthCheck.timeout must be shorter than healthCheck.interval"],
        id="health-timeout-not-below-interval",
    ),
    pytest.param(
        changed(valid_backend(), "spec.healthCheck.metrics", {"path": "/metrics"}),
        ["spec.healthCheck.metrics", "hosted OpenAI and Anthropic serve no metrics"],
        id="metrics-scrape-of-a-hosted-provider",
    ),
    pytest.param(
        changed(valid_vllm_backend(), "spec.selfHosted", DELETE),
        ["spec", "selfHosted is required for provider VLLM"],
        id="vllm-without-deployment",
    ),
    pytest.param(
        changed(valid_vllm_backend(), "spec.selfHosted.servedModelName", "other"),
        ["spec.selfHosted.servedModelName", "must be one of spec.models[].name"],
        id="served-name-not-a-model",
    ),
]


@pytest.mark.parametrize(
    "doc",
    [valid_policy(), valid_backend(), valid_vllm_backend()],
    ids=["policy", "backend", "vllm-backend"],
)
def test_the_valid_bases_of_the_invalid_cases_are_accepted(
    kubectl: Kubectl, namespace: str, doc: dict[str, Any]
):
    kubectl.apply(yaml.safe_dump(doc), namespace=namespace)


def test_there_are_at_least_fifteen_invalid_cases():
    assert len(INVALID) >= 15
    assert len({case.id for case in INVALID}) == len(INVALID)


@pytest.mark.parametrize(("doc", "expected"), INVALID)
def test_invalid_resource_is_refused_with_a_message_naming_the_problem(
    kubectl: Kubectl, namespace: str, doc: dict[str, Any], expected: list[str]
):
    with pytest.raises(KubectlError) as refused:
        kubectl.apply(yaml.safe_dump(doc), namespace=namespace)
    for fragment in expected:
        assert fragment in refused.value.stderr
    missing = kubectl.run(
        "get", doc["kind"].lower(), doc["metadata"]["name"], "-n", namespace, check=False
    )
    assert "NotFound" in missing.stderr, "a refused resource must not be stored"


def test_kubectl_explain_teaches_the_routes(kubectl: Kubectl):
    out = kubectl.run("explain", "routingpolicy.spec.routes").stdout
    assert "Routes in order: a request takes the first whose match holds." in out
    for field in ("match", "strategy", "targets", "retry", "timeouts", "circuitBreaker", "hedging"):
        assert f"  {field}\t<" in out, field
    strategy = " ".join(kubectl.run("explain", "rp.spec.routes.strategy.type").stdout.split())
    assert "Cascade: cheapest first, escalating when the answer fails the quality gate" in strategy


def test_short_names_and_the_category_list_both_kinds(kubectl: Kubectl, namespace: str):
    kubectl.apply(yaml.safe_dump(valid_backend()), namespace=namespace)
    kubectl.apply(yaml.safe_dump(valid_policy()), namespace=namespace)
    out = kubectl.run("get", "routemesh", "-n", namespace).stdout
    assert "modelbackend.routemesh.dev/backend" in out
    assert "routingpolicy.routemesh.dev/policy" in out
    assert kubectl.get("rp", "policy", namespace=namespace)["kind"] == "RoutingPolicy"
    assert kubectl.get("mb", "backend", namespace=namespace)["kind"] == "ModelBackend"


def table(output: str) -> list[dict[str, str]]:
    """Rows of `kubectl get` output as dicts, cut at the header's offsets: cells may be empty."""
    header, *rows = output.splitlines()
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    names = [header[a:b].strip() for a, b in bounds]
    return [{n: row[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)} for row in rows]


def test_printer_columns_show_status_and_price(kubectl: Kubectl, namespace: str):
    kubectl.apply(yaml.safe_dump(valid_backend()), namespace=namespace)
    kubectl.apply(yaml.safe_dump(valid_policy()), namespace=namespace)
    status = {
        "status": {
            "observedGeneration": 1,
            "routeTableVersion": "7-3f2a9c",
            "sidecars": {"desired": 3, "synced": 2, "rejected": 0},
            "conditions": [
                {
                    "type": "Accepted",
                    "status": "True",
                    "reason": "Compiled",
                    "message": "2 routes compiled",
                    "observedGeneration": 1,
                    "lastTransitionTime": "2026-11-25T10:00:00Z",
                }
            ],
        }
    }
    kubectl.run(
        "patch",
        "rp",
        "policy",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        yaml.safe_dump(status),
    )
    [policy] = table(kubectl.run("get", "rp", "policy", "-n", namespace).stdout)
    assert list(policy) == ["NAME", "ACCEPTED", "SYNCED", "DESIRED", "AGE"]
    assert policy | {"AGE": ""} == {
        "NAME": "policy",
        "ACCEPTED": "True",
        "SYNCED": "2",
        "DESIRED": "3",
        "AGE": "",
    }
    [wide] = table(kubectl.run("get", "rp", "policy", "-n", namespace, "-o", "wide").stdout)
    assert wide["VERSION"] == "7-3f2a9c"
    assert wide["REJECTED"] == "0"
    [backend] = table(kubectl.run("get", "mb", "backend", "-n", namespace).stdout)
    assert list(backend) == [
        "NAME",
        "PROVIDER",
        "ACCEPTED",
        "READY",
        "INPUT$/M",
        "OUTPUT$/M",
        "AGE",
    ]
    assert backend["PROVIDER"] == "OpenAI"
    assert (backend["INPUT$/M"], backend["OUTPUT$/M"]) == ("0.15", "0.60")
    assert backend["ACCEPTED"] == "", "no status yet: the column is empty, not invented"


def test_status_is_a_subresource_that_refuses_a_malformed_condition(
    kubectl: Kubectl, namespace: str
):
    kubectl.apply(yaml.safe_dump(valid_backend()), namespace=namespace)
    condition = {
        "type": "Accepted",
        "status": "Maybe",
        "reason": "x y",
        "message": "",
        "lastTransitionTime": "2026-11-25T10:00:00Z",
    }
    bad = {"status": {"conditions": [condition]}}
    with pytest.raises(KubectlError) as refused:
        kubectl.run(
            "patch",
            "mb",
            "backend",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            yaml.safe_dump(bad),
        )
    assert 'status.conditions[0].status: Unsupported value: "Maybe"' in refused.value.stderr
    assert "status.conditions[0].reason" in refused.value.stderr
    # A write to the main resource cannot set status: the subresource owns it.
    with_status = {**valid_backend(), "status": {"readyEndpoints": 5}}
    kubectl.apply(yaml.safe_dump(with_status), namespace=namespace)
    assert "status" not in kubectl.get("mb", "backend", namespace=namespace)
