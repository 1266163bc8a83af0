"""The dashboard and the suggested alerts name only series and labels RouteMesh exports.

The sidecar's series come from its metric objects, the operator's from a scrape of its registry.

A renamed metric or label would otherwise leave a dashboard panel empty and an alert silent,
with nothing failing. Prometheus adds `namespace` (and the histograms' `le`) when it scrapes.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from routemesh_operator.metrics import OperatorMetrics, RuntimeState
from routemesh_sidecar.telemetry.metrics import Metrics
from routemesh_testing.controlplane import REPO_ROOT

MONITORING = REPO_ROOT / "docs" / "monitoring"
ADDED_BY_PROMETHEUS = {"namespace", "le"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Every series name the sidecar exports, with its label names."""
    series: dict[str, set[str]] = {}
    metrics = Metrics()
    for metric in vars(metrics).values():
        describe = getattr(metric, "describe", None)
        if describe is None:
            continue
        for family in describe():
            # prometheus_client keeps label names only on the metric object.
            labels = set(metric._labelnames)
            for suffix in SUFFIXES[family.type]:
                series[family.name + suffix] = labels
    operator = OperatorMetrics(RuntimeState(certificate_expiry=lambda: datetime.now(UTC)))
    for family in text_string_to_metric_families(operator.exposition().decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((MONITORING / "routemesh-dashboard.json").read_text())
    found = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    found += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


def alert_expressions() -> list[str]:
    rules: Any = yaml.safe_load((MONITORING / "routemesh-alerts.yaml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


EXPRESSIONS = dashboard_expressions() + alert_expressions()


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_every_series_and_label_an_expression_names_is_exported(expression: str):
    series = exported()
    names = set(re.findall(r"\broutemesh_[a-z_]+", expression))
    assert names, f"no RouteMesh series in {expression!r}"
    unknown = names - set(series)
    assert not unknown, f"not exported: {unknown}"
    labels = set().union(*(series[name] for name in names)) | ADDED_BY_PROMETHEUS
    grouped = {
        label.strip()
        for group in re.findall(r"\bby \(([^)]*)\)", expression)
        for label in group.split(",")
    }
    matched = set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", expression))
    used = (grouped | matched) - {""}
    assert used <= labels, f"labels {used - labels} are not on {names}"


def test_the_dashboard_and_the_alerts_cover_traffic_health_and_cost():
    everything = " ".join(EXPRESSIONS)
    for name in (
        "routemesh_requests_total",
        "routemesh_request_duration_seconds_bucket",
        "routemesh_circuit_breaker_state",
        "routemesh_endpoint_ejected",
        "routemesh_endpoint_healthy",
        "routemesh_cost_usd_total",
        "routemesh_time_to_first_token_seconds_bucket",
        "routemesh_operator_leader",
        "routemesh_operator_sidecars",
        "routemesh_operator_webhook_certificate_expiry_timestamp_seconds",
    ):
        assert name in everything, name
