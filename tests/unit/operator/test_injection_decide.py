"""Which pods injection touches: opt-in, opt-out, excluded namespaces, already injected."""

from __future__ import annotations

from typing import Any

import pytest

from routemesh_operator.injection import Decision, InjectionSettings, decide

pytestmark = pytest.mark.timeout(10)

SETTINGS = InjectionSettings()
LABELLED = {"routemesh.dev/inject": "enabled"}


def pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "chat", "labels": {"app": "chat"}}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "app", "image": "example/chat:1"}], **spec},
    }


def test_a_pod_in_a_labelled_namespace_is_injected():
    decision = decide(pod(), "apps", LABELLED, SETTINGS)
    assert decision == Decision(True, "namespace apps opts in (routemesh.dev/inject label)")


@pytest.mark.parametrize("value", ["enabled", "true"])
def test_an_annotation_alone_never_opts_a_pod_in_since_no_selector_can_see_it(value):
    decision = decide(pod({"routemesh.dev/inject": value}), "apps", {}, SETTINGS)
    assert not decision.inject
    assert "label the pod instead" in decision.reason


@pytest.mark.parametrize("value", ["Enabled", "TRUE", " enabled ", "yes"])
def test_values_are_matched_exactly_as_the_webhooks_selectors_match_them(value):
    # The API server's selectors compare label values exactly; so does injection.
    decision = decide(labelled_pod(value), "apps", {}, SETTINGS)
    assert not decision.inject
    assert "is not understood" in decision.reason
    assert not decide(pod(), "apps", {"routemesh.dev/inject": value}, SETTINGS).inject


@pytest.mark.parametrize("value", ["enabled", "true"])
def test_a_namespace_label_of_true_also_opts_in(value):
    assert decide(pod(), "apps", {"routemesh.dev/inject": value}, SETTINGS).inject


@pytest.mark.parametrize("value", ["disabled", "false"])
def test_a_pod_that_opts_out_wins_over_its_labelled_namespace(value):
    decision = decide(pod({"routemesh.dev/inject": value}), "apps", LABELLED, SETTINGS)
    assert decision == Decision(False, "the pod opts out (routemesh.dev/inject annotation)")


def test_a_namespace_that_opts_out_wins_over_a_pod_that_opts_in():
    decision = decide(
        pod({"routemesh.dev/inject": "enabled"}),
        "apps",
        {"routemesh.dev/inject": "disabled"},
        SETTINGS,
    )
    assert decision == Decision(False, "namespace apps opts out (routemesh.dev/inject label)")


def test_an_annotation_nobody_can_read_is_not_taken_as_consent():
    decision = decide(pod({"routemesh.dev/inject": "yes"}), "apps", LABELLED, SETTINGS)
    assert not decision.inject
    assert "'yes' is not understood" in decision.reason


@pytest.mark.parametrize("labels", [{}, {"routemesh.dev/inject": "yes"}, {"other": "enabled"}])
def test_a_pod_nobody_opted_in_is_left_alone(labels):
    decision = decide(pod({"unrelated": "x"}), "apps", labels, SETTINGS)
    assert decision == Decision(False, "neither the pod nor its namespace opts in")


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public", "kube-node-lease"])
def test_system_namespaces_are_never_injected_whatever_they_say(namespace):
    decision = decide(pod({"routemesh.dev/inject": "enabled"}), namespace, LABELLED, SETTINGS)
    assert decision == Decision(False, f"{namespace} is a system namespace")


def test_configured_namespaces_are_never_injected_and_the_system_ones_stay_excluded():
    settings = InjectionSettings(excluded_namespaces=("monitoring",))
    annotated = pod({"routemesh.dev/inject": "enabled"})
    decision = decide(annotated, "monitoring", LABELLED, settings)
    assert not decision.inject
    assert "excluded" in decision.reason
    assert not decide(annotated, "kube-system", LABELLED, settings).inject
    assert decide(annotated, "apps", LABELLED, settings).inject


@pytest.mark.parametrize(
    ("settings", "namespace"),
    [(SETTINGS, "routemesh-system"), (InjectionSettings(operator_namespace="rm"), "rm")],
)
def test_the_operators_own_namespace_is_never_injected(settings, namespace):
    decision = decide(pod({"routemesh.dev/inject": "enabled"}), namespace, LABELLED, settings)
    assert decision == Decision(False, f"{namespace} is the operator's own namespace")


def test_routemesh_system_is_an_ordinary_namespace_when_the_operator_runs_elsewhere():
    settings = InjectionSettings(operator_namespace="rm")
    assert decide(pod(), "routemesh-system", LABELLED, settings).inject


@pytest.mark.parametrize(
    "injected",
    [
        pod({"routemesh.dev/injected": "0.1.0"}),
        pod(initContainers=[{"name": "routemesh-sidecar", "image": "s"}]),
        pod(containers=[{"name": "routemesh-sidecar", "image": "s"}]),
    ],
    ids=["annotation", "init-container", "container"],
)
def test_an_injected_pod_is_left_unchanged(injected):
    assert decide(injected, "apps", LABELLED, SETTINGS) == Decision(False, "already injected")


def test_a_host_network_pod_is_not_injected():
    decision = decide(pod(hostNetwork=True), "apps", LABELLED, SETTINGS)
    assert decision == Decision(False, "the pod uses the host network")


@pytest.mark.parametrize(
    "odd",
    [{}, {"metadata": None, "spec": None}, {"metadata": {"annotations": None}}],
)
def test_a_malformed_pod_gets_an_answer_not_an_exception(odd):
    # The API server validates the pod after the webhooks; the decision must not crash first.
    assert decide(odd, "apps", LABELLED, SETTINGS).inject
    assert not decide(odd, "apps", {}, SETTINGS).inject


def labelled_pod(value: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    labelled = pod(annotations)
    labelled["metadata"]["labels"]["routemesh.dev/inject"] = value
    return labelled


@pytest.mark.parametrize(
    ("value", "annotation", "namespace_labels", "expected"),
    [
        ("enabled", None, {}, Decision(True, "the pod opts in (routemesh.dev/inject label)")),
        ("true", None, {}, Decision(True, "the pod opts in (routemesh.dev/inject label)")),
        (
            "disabled",
            None,
            LABELLED,
            Decision(False, "the pod opts out (routemesh.dev/inject label)"),
        ),
        # The label is what the webhook's selectors saw, so it wins over the annotation.
        (
            "disabled",
            "enabled",
            LABELLED,
            Decision(False, "the pod opts out (routemesh.dev/inject label)"),
        ),
        ("enabled", "disabled", {}, Decision(True, "the pod opts in (routemesh.dev/inject label)")),
    ],
)
def test_a_pods_label_states_its_choice_before_its_annotation(
    value: str, annotation: str | None, namespace_labels: dict[str, str], expected: Decision
):
    annotations = {"routemesh.dev/inject": annotation} if annotation else None
    assert decide(labelled_pod(value, annotations), "apps", namespace_labels, SETTINGS) == expected


def test_a_pod_label_nobody_can_read_is_not_injected_and_says_where():
    decision = decide(labelled_pod("maybe"), "apps", LABELLED, SETTINGS)
    assert not decision.inject
    assert decision.reason.startswith("label routemesh.dev/inject='maybe' is not understood")
