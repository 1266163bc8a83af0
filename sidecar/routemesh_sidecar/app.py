"""Wire the sidecar's parts together and run them until cancelled.

Called by `__main__` with settings already read (and by tests, which inject a clock, randomness
and a span processor). It owns the lifetime of the listeners, the route-table source's task and
the upstream pools; the parts themselves know nothing of each other beyond their interfaces.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor

from routemesh_sidecar.admin.server import AdminSources, build_admin_app
from routemesh_sidecar.discovery.file import FileRouteTableSource, RouteTableSource
from routemesh_sidecar.discovery.shadow_report import ShadowReporter
from routemesh_sidecar.discovery.shared_health import (
    HealthReport,
    SharedEntry,
    SharedHealthChannel,
)
from routemesh_sidecar.discovery.watch import (
    WatchRouteTableSource,
    WatchTarget,
    read_downward_labels,
)
from routemesh_sidecar.listener.proxy import Listener, ListenerParts
from routemesh_sidecar.listener.server import ListenerServer
from routemesh_sidecar.listener.shadow import MirrorLimits, Shadowing
from routemesh_sidecar.routetable import ActiveRouteTable, Locality, RouteTable, TableRefused
from routemesh_sidecar.routing.learned import LearnedRouting
from routemesh_sidecar.routing.pipeline import Router, unsupported_strategies
from routemesh_sidecar.routing.semantic import SemanticMatcher
from routemesh_sidecar.routing.tokens import Tokenizers, load_tokenizers
from routemesh_sidecar.settings import SidecarSettings
from routemesh_sidecar.telemetry.metrics import CONTENT_TYPE, Metrics
from routemesh_sidecar.telemetry.otlp import ExportSettings, OtlpExporter, SpanEncoder
from routemesh_sidecar.telemetry.tracing import SCOPE, SpanRecorder
from routemesh_sidecar.upstream.breaker import STATE_VALUES, Transition
from routemesh_sidecar.upstream.client import CredentialStore, UpstreamClient, UpstreamPool
from routemesh_sidecar.upstream.executor import Executor
from routemesh_sidecar.upstream.health import HealthChecker
from routemesh_sidecar.upstream.registry import BalancerSettings, HealthRegistry
from routemesh_sidecar.upstream.retry import Clock, SystemClock

log = logging.getLogger(__name__)


async def refuse_unsupported_strategies(table: RouteTable) -> None:
    """A preparer: refuse a table naming a strategy this sidecar cannot run."""
    problems = unsupported_strategies(table)
    if problems:
        raise TableRefused("; ".join(problems))


class Sidecar:
    """The running sidecar: its listeners, its route table and the state readiness reads."""

    def __init__(
        self,
        settings: SidecarSettings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        span_processor: SpanProcessor | None = None,
        variables: Mapping[str, str] | None = None,
        source: RouteTableSource | None = None,
    ) -> None:
        self.settings = settings
        self.active = ActiveRouteTable()
        self.active.add_preparer(refuse_unsupported_strategies)
        # Embedding models run here, never on the event loop.
        self.embedding_pool = ThreadPoolExecutor(
            settings.embedding_threads, thread_name_prefix="routemesh-embedding"
        )
        self.semantic = SemanticMatcher(
            self.embedding_pool,
            static_model=settings.static_model,
            transformer_model=settings.transformer_model,
            cache_size=settings.embedding_cache_size,
            queue_limit=settings.embedding_queue_limit,
        )
        self.active.add_preparer(self.semantic.prepare)
        self.learned = LearnedRouting()
        self.active.add_preparer(self.learned.prepare)
        self.metrics = Metrics()
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        # A processor passed in (tests) belongs to the caller, who shuts it down; with one, the
        # sidecar does not export on its own.
        resource = Resource.create({"service.name": settings.otel_service_name})
        self.spans = SpanRecorder(
            span_processor,
            resource,
            self._sampling_ratio,
            exporter=self._span_exporter(resource) if span_processor is None else None,
        )
        self.pool = UpstreamPool()
        client = UpstreamClient(self.pool, CredentialStore(variables or {}), self.clock.wall)
        self.health = HealthRegistry(
            self.clock,
            BalancerSettings(
                latency_decay_seconds=settings.latency_decay_seconds,
                default_latency_seconds=settings.default_latency_seconds,
                locality=Locality(zone=settings.zone, region=settings.region),
            ),
        )
        self.health.on_transition(self._record_transition)
        self.executor = Executor(client, self.clock, self.rng, self.health)
        self.router = Router(self.health, semantic=self.semantic)
        self.shadowing = Shadowing(
            self.router,
            client,
            self.metrics,
            self.rng,
            limits=MirrorLimits(settings.mirror_busy_requests, settings.mirror_max_in_flight),
        )
        self.health_checker = HealthChecker(
            self._probe_session, self.clock.monotonic, self.health.emit
        )
        self._probe_http: aiohttp.ClientSession | None = None
        self.active.on_swap(self._follow_table)
        self.shared_health: SharedHealthChannel | None = None
        self.shadow_reporter: ShadowReporter | None = None
        self.source = source or self._discovery_source() or self._file_source()
        self._runners: list[web.BaseRunner] = []
        self._listener: ListenerServer | None = None  # drained first, before anything else stops
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self.listen_port: int | None = None
        self.admin_port: int | None = None
        self._started = False

    def _span_exporter(self, resource: Resource) -> OtlpExporter | None:
        """Export over OTLP/HTTP when an endpoint is configured; no export otherwise."""
        settings = self.settings
        if not settings.traces_url:
            return None
        return OtlpExporter(
            SpanEncoder(resource, SCOPE),
            ExportSettings(
                settings.traces_url,
                headers=settings.otlp_header_map(),
                timeout_seconds=settings.export_timeout_seconds,
                compression=settings.otlp_compression,
                certificate=str(settings.otlp_certificate) if settings.otlp_certificate else None,
                batch_spans=settings.otlp_batch_spans,
                interval_seconds=settings.otlp_schedule_delay_ms / 1000,
                max_queued_spans=settings.otlp_max_queued_spans,
            ),
            count=self.metrics.count_spans,
        )

    def _probe_session(self) -> aiohttp.ClientSession:
        """One small pool for health probes, apart from the request pools."""
        if self._probe_http is None or self._probe_http.closed:
            self._probe_http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32), skip_auto_headers=("User-Agent",)
            )
        return self._probe_http

    def _follow_table(self, table: RouteTable) -> None:
        """A new table: drop the health state of what it removed, probe what it checks."""
        self.health.retain(table)
        if self._started:
            self.health_checker.follow(self.health.probe_targets(table))

    def _record_transition(self, transition: Transition) -> None:
        backend, _, endpoint = transition.subject.partition(" ")
        metrics = self.metrics
        metrics.of(
            metrics.health_transitions, transition.mechanism, backend, transition.to_state
        ).inc()
        if transition.mechanism == "circuit_breaker":
            value = STATE_VALUES.get(transition.to_state, 0)
            metrics.of(metrics.breaker_state, backend).set(value)
        elif transition.mechanism == "outlier_detection":
            ejected = 1 if transition.to_state == "ejected" else 0
            metrics.of(metrics.endpoint_ejected, backend, endpoint).set(ejected)
        else:
            healthy = 1 if transition.to_state == "healthy" else 0
            metrics.of(metrics.endpoint_healthy, backend, endpoint).set(healthy)

    def _sampling_ratio(self) -> float:
        table = self.active.current
        return table.telemetry.sampling_ratio if table else 1.0

    def _discovery_source(self) -> RouteTableSource | None:
        settings = self.settings
        if not settings.discovery_url:
            return None
        if not settings.pod_name or not settings.pod_namespace:
            raise ValueError("discovery needs pod_name and pod_namespace (the downward API)")
        labels = {}
        if settings.pod_labels_path is not None and settings.pod_labels_path.exists():
            labels = read_downward_labels(settings.pod_labels_path)
        target = WatchTarget(
            url=settings.discovery_url,
            namespace=settings.pod_namespace,
            pod=settings.pod_name,
            labels=labels,
            token_file=settings.discovery_token_path,
            ca_file=settings.discovery_ca_path,
        )
        fallbacks = [settings.route_table_path] if settings.route_table_path else []
        if settings.shared_health:
            self.shared_health = SharedHealthChannel(
                target, self._apply_shared, rng=self.rng, on_peers=self._set_peers
            )
            self.health.on_transition(self._report_transition)
        self.shadow_reporter = ShadowReporter(
            target, self.shadowing.ledger, interval=settings.shadow_report_seconds
        )
        return WatchRouteTableSource(
            target,
            self.active,
            fallbacks=fallbacks,
            last_good=settings.last_good_path,
            rng=self.rng,
        )

    def _report_transition(self, transition: Transition) -> None:
        """Tell the operator what this sidecar saw (never what it was told: no echoes)."""
        channel = self.shared_health
        if channel is None or transition.reason.startswith("shared:"):
            return
        report = shared_report(transition, self.health.now())
        if report is not None:
            channel.report(report)

    def _set_peers(self, peers: int) -> None:
        self.health.peers = peers

    def _apply_shared(self, entries: list[SharedEntry]) -> None:
        fresh = self.settings.shared_health_fresh_seconds
        for entry in entries:
            reason = f"{entry.reporters} pods: {entry.reason}"
            self.health.apply_shared(entry.backend, entry.endpoint, entry.seconds, reason, fresh)

    def _file_source(self) -> RouteTableSource | None:
        path = self.settings.route_table_path
        if path is None:
            return None
        return FileRouteTableSource(path, self.active, self.settings.route_table_poll_seconds)

    def not_ready_reason(self) -> str | None:
        """Say why the sidecar cannot serve (yet, or any more); None while it can."""
        if self.draining:
            return "draining: stopping, finishing the requests in flight"
        if self.active.current is None:
            return self.active.last_error or "no route table loaded"
        if self.listen_port is None:
            return "listener not bound"
        return None

    def config_dump(self) -> dict[str, Any]:
        """The active table's version, routes and backends, without any secret."""
        table = self.active.current
        dump: dict[str, Any] = {"last_error": self.active.last_error, "route_table": None}
        if table is not None:
            data = table.model_dump(mode="json")
            for backend in data["backends"].values():
                credentials = backend.pop("credentials", None)
                backend["credentials"] = "configured" if credentials else "none"
            dump["route_table"] = {**data, "version": table.version_label}
        dump["health"] = self.health.snapshot()
        return dump

    async def start(self, before_listening: Callable[[], None] | None = None) -> None:
        """Load the route table, then bind the listeners and start the source's watch.

        `before_listening` is called once everything but the downstream listener has started,
        with no request in flight or waiting (the process entry point freezes what start-up
        loaded then: see `__main__.settle_heap`).
        """
        self._started = True
        tokenizers = await self._tokenizers()
        if tokenizers is not None:  # before the first table, which may name GPT-4
            self.active.add_preparer(tokenizers.prepare)
        if self.source is not None:
            await self.source.load_once()
            self._spawn("route-table-source", self.source.run())
        if self.spans.exporter is not None:
            self._spawn("otlp-export", self.spans.exporter.run())
        if self.shared_health is not None:
            self._spawn("shared-health-sender", self.shared_health.run_sender())
            self._spawn("shared-health-watcher", self.shared_health.run_watcher())
        if self.shadow_reporter is not None:
            self._spawn("shadow-reporter", self.shadow_reporter.run())
        if self.active.current is not None:
            self.health_checker.follow(self.health.probe_targets(self.active.current))
        admin = AdminSources(
            self.not_ready_reason, self.config_dump, self.metrics.render, CONTENT_TYPE
        )
        admin_runner = web.AppRunner(
            build_admin_app(admin), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        self.admin_port = await self._serve(
            admin_runner, self.settings.admin_host, self.settings.admin_port
        )
        parts = ListenerParts(
            self.active,
            self.router,
            self.executor,
            self.metrics,
            self.spans,
            self.settings.max_body_bytes,
            self.rng,
            self.settings.content_capture_max_bytes,
            self.shadowing,
            tokenizers,
            self.semantic,
            self.learned,
        )
        if before_listening is not None:
            before_listening()
        listener = Listener(parts).server()
        self.listen_port = await listener.start(
            self.settings.listen_host, self.settings.listen_port
        )
        self._listener = listener
        log.info(
            "listening on %s:%d (admin %d)",
            self.settings.listen_host,
            self.listen_port,
            self.admin_port,
        )

    async def _tokenizers(self) -> Tokenizers | None:
        """OpenAI's vocabularies, built off the event loop (it takes a moment), when wanted."""
        if not self.settings.exact_tokens:
            return None
        return await asyncio.to_thread(load_tokenizers)

    async def _serve(self, runner: web.BaseRunner, host: str, port: int) -> int:
        """Start `runner` on host:port; the port it bound (when 0 was asked for)."""
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        server = site._server  # the bound port, when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    def _spawn(self, name: str, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_log_task_end)
        self._tasks.append(task)

    async def stop(self) -> None:
        """Drain the listener, then stop the watch, close the admin listener and pools, flush spans.

        Draining first: the listening socket closes at once (new connections are refused, idle
        keep-alive ones closed), and the requests in flight finish for up to `drain_seconds`,
        with the route table, the pools and the exporter still running under them.
        """
        self.draining = True
        if self._listener is not None:
            await self._listener.drain(self.settings.drain_seconds)
            self._listener = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.source is not None:
            # Also when its task was cancelled before it ever ran (and so never cleaned up).
            await self.source.close()
        if self.shared_health is not None:
            await self.shared_health.close()
        if self.shadow_reporter is not None:
            await self.shadow_reporter.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        await self.health_checker.stop()
        await self.shadowing.close()
        await self.pool.close()
        if self._probe_http is not None:
            await self._probe_http.close()
        if self.spans.exporter is not None:
            await self.spans.exporter.close()  # the spans of the last requests go out too
        self.embedding_pool.shutdown(wait=False, cancel_futures=True)

    async def run_forever(self, before_listening: Callable[[], None] | None = None) -> None:
        """Start, serve until SIGTERM or SIGINT (or cancellation), then drain and stop.

        `before_listening` goes to `start`.
        """
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await self.start(before_listening)
        try:
            await stopping.wait()
            log.info("stopping: draining for up to %g s", self.settings.drain_seconds)
        finally:
            await self.stop()


def shared_report(transition: Transition, now: float) -> HealthReport | None:
    """The report for the operator of a transition worth sharing, if it is one."""
    backend, _, endpoint = transition.subject.partition(" ")
    seconds = max(0.0, transition.until - now) if transition.until is not None else 0.0
    if transition.mechanism == "circuit_breaker":
        if transition.to_state == "open":
            return HealthReport(backend, None, True, seconds, transition.reason)
        if transition.to_state == "closed":
            return HealthReport(backend, None, False)
    elif transition.mechanism == "outlier_detection":
        if transition.to_state == "ejected":
            return HealthReport(backend, endpoint or None, True, seconds, transition.reason)
        if transition.to_state == "healthy":
            return HealthReport(backend, endpoint or None, False)
    return None


def _log_task_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %s died: %r", task.get_name(), exc, exc_info=exc)
