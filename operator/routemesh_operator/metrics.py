"""The operator's own Prometheus metrics, on a plain-HTTP port that a ServiceMonitor scrapes.

`OperatorMetrics` holds one registry per runtime (no global registry): a counter that the
webhook increments once per answer, and a collector that reads the runtime's live state at
scrape time (whether this replica leads, the published route tables, the sidecars by sync
state, compiles, the webhook certificate's expiry), so nothing on the reconcile or admission
path updates a gauge. The runtime creates it, hands `count_admission` to the webhook, and
serves `app()` when `metrics_port` is set. It never writes to the cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

SIDECAR_STATES = ("synced", "rejected", "pending")
ADMISSION_DECISIONS = ("injected", "reinvoked", "skipped", "refused", "error")


@dataclass
class RuntimeState:
    """Readers of the live state; each is called at scrape time only."""

    leading: Callable[[], bool] = lambda: False
    route_tables: Callable[[], int] = lambda: 0
    sidecars: Callable[[], dict[str, int]] = dict  # by state: synced, rejected, pending
    compiles: Callable[[], int] = lambda: 0
    certificate_expiry: Callable[[], datetime | None] = lambda: None


class _StateCollector(Collector):
    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        yield GaugeMetricFamily(
            "routemesh_operator_leader",
            "1 while this replica leads (writes status, ConfigMaps and workloads), else 0.",
            value=1.0 if state.leading() else 0.0,
        )
        yield GaugeMetricFamily(
            "routemesh_operator_route_tables",
            "Route tables compiled and published to sidecars, one per valid RoutingPolicy.",
            value=float(state.route_tables()),
        )
        sidecars = GaugeMetricFamily(
            "routemesh_operator_sidecars",
            "Sidecars watching this replica, by the state of their last answer: synced (ACK), "
            "rejected (NACK) or pending (no answer yet).",
            labels=["state"],
        )
        counts = state.sidecars()
        for name in SIDECAR_STATES:
            sidecars.add_metric([name], float(counts.get(name, 0)))
        yield sidecars
        yield CounterMetricFamily(
            "routemesh_operator_compiles",
            "Namespace compiles run (each compiles every policy of one namespace).",
            value=float(state.compiles()),
        )
        expiry = state.certificate_expiry()
        if expiry is not None:
            yield GaugeMetricFamily(
                "routemesh_operator_webhook_certificate_expiry_timestamp_seconds",
                "When the webhook's serving certificate expires (Unix time); the operator "
                "renews it before then.",
                value=expiry.timestamp(),
            )


class OperatorMetrics:
    """One runtime's registry; see the module docstring."""

    def __init__(self, state: RuntimeState) -> None:
        self.registry = CollectorRegistry()
        self._admissions = Counter(
            "routemesh_operator_admissions",
            "Pods the injection webhook answered, by decision: injected, reinvoked (called again "
            "after other webhooks changed an injected pod: nothing to do), skipped (the pod does "
            "not opt in, or may never be injected), refused (its annotations ask for a sidecar "
            "that cannot work), error (the webhook failed; the failure policy decided).",
            ["decision"],
            registry=self.registry,
        )
        for decision in ADMISSION_DECISIONS:  # every series exists from the start, at 0
            self._admissions.labels(decision)
        self.registry.register(_StateCollector(state))

    def count_admission(self, decision: str) -> None:
        """Count one answer of the webhook."""
        self._admissions.labels(decision).inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)

    def app(self) -> web.Application:
        """`GET /metrics`, for the Service's `metrics` port."""

        async def metrics(_: web.Request) -> web.Response:
            response = web.Response(body=self.exposition())
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app
