"""The operator's own metrics: what a scrape shows, read from the live state at scrape time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from routemesh_operator.distribution.sync import SyncTracker
from routemesh_operator.metrics import OperatorMetrics, RuntimeState

pytestmark = pytest.mark.timeout(10)


def scrape(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_a_scrape_reads_the_state_as_it_is_then():
    tracker = SyncTracker(clock=lambda: 0.0)
    state: dict[str, Any] = {"leading": False, "tables": 0}
    metrics = OperatorMetrics(
        RuntimeState(
            leading=lambda: state["leading"],
            route_tables=lambda: state["tables"],
            sidecars=tracker.states,
            compiles=lambda: 7,
            certificate_expiry=lambda: datetime(2031, 1, 1, tzinfo=UTC),
        )
    )
    first = scrape(metrics)
    assert first[("routemesh_operator_leader", ())] == 0
    assert first[("routemesh_operator_sidecars", (("state", "synced"),))] == 0
    # Every decision's series exists before the first pod, so rate() has a start.
    assert first[("routemesh_operator_admissions_total", (("decision", "refused"),))] == 0
    state.update(leading=True, tables=3)
    tracker.report("apps", "a", "chat", acked="v1")
    tracker.report("apps", "b", "chat", nacked="v2", error="bad")
    tracker.report("apps", "c", "chat")
    metrics.count_admission("injected")
    metrics.count_admission("injected")
    metrics.count_admission("skipped")
    second = scrape(metrics)
    assert second[("routemesh_operator_leader", ())] == 1
    assert second[("routemesh_operator_route_tables", ())] == 3
    assert {
        state: second[("routemesh_operator_sidecars", (("state", state),))]
        for state in ("synced", "rejected", "pending")
    } == {"synced": 1, "rejected": 1, "pending": 1}
    assert second[("routemesh_operator_admissions_total", (("decision", "injected"),))] == 2
    assert second[("routemesh_operator_admissions_total", (("decision", "skipped"),))] == 1
    assert second[("routemesh_operator_compiles_total", ())] == 7
    expiry = ("routemesh_operator_webhook_certificate_expiry_timestamp_seconds", ())
    assert second[expiry] == datetime(2031, 1, 1, tzinfo=UTC).timestamp()


def test_without_a_certificate_of_its_own_there_is_no_expiry_series():
    names = {name for name, _ in scrape(OperatorMetrics(RuntimeState()))}
    assert "routemesh_operator_webhook_certificate_expiry_timestamp_seconds" not in names
    assert "routemesh_operator_leader" in names


def test_a_sidecar_that_acked_then_refused_counts_as_rejected_until_it_acks_again():
    tracker = SyncTracker(clock=lambda: 0.0)
    tracker.report("apps", "a", "chat", acked="v1")
    tracker.report("apps", "a", "chat", nacked="v2", error="bad")
    assert tracker.states() == {"synced": 0, "rejected": 1, "pending": 0}
    tracker.report("apps", "a", "chat", acked="v3")
    assert tracker.states() == {"synced": 1, "rejected": 0, "pending": 0}
