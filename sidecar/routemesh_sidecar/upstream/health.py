"""Active health checking: probe each endpoint on an interval, and read vLLM's load metrics.

`HealthChecker` runs one named background task per checked endpoint (the sidecar starts and stops
them as route tables come and go). A probe is cheap: `GET {endpoint}/models` for an
OpenAI-compatible or Anthropic server, or, for a vLLM server with `metrics` set, a scrape of its
Prometheus `/metrics` (`vllm:num_requests_waiting`, `vllm:num_requests_running`,
`vllm:kv_cache_usage_perc`). `ActiveHealth` turns probe results into healthy/unhealthy with the
backend's thresholds, and keeps the last load it read; load older than `stale_after` counts as
saturated, because a server too busy to answer its scrape is busy.

This is one of three separate mechanisms: it never reads request results (outlier detection and
the circuit breaker do). Time is passed in, so the state machine is testable on a virtual clock;
only `HealthChecker` does I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from routemesh_sidecar.routetable import Backend, HealthCheck
from routemesh_sidecar.upstream.breaker import Transition

log = logging.getLogger(__name__)

HealthStatus = Literal["unknown", "healthy", "unhealthy"]
_VLLM_GAUGES = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # the name before vLLM 0.7
}


@dataclass(frozen=True)
class ModelServerLoad:
    """What a vLLM server said about its load, and when."""

    waiting: float
    running: float
    kv_cache_usage: float
    scraped_at: float


def parse_vllm_metrics(text: str, scraped_at: float) -> ModelServerLoad:
    """Read the load gauges from vLLM's Prometheus text; sums over models, max for the cache.

    Raises ValueError when the text is not Prometheus text or holds none of the gauges.
    """
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = _VLLM_GAUGES.get(sample.name)
            if key is None:
                continue
            if key == "kv_cache_usage":
                values[key] = max(values.get(key, 0.0), sample.value)
            else:
                values[key] = values.get(key, 0.0) + sample.value
    if not values:
        raise ValueError("no vLLM load gauges in the metrics")
    return ModelServerLoad(
        waiting=values.get("waiting", 0.0),
        running=values.get("running", 0.0),
        kv_cache_usage=values.get("kv_cache_usage", 0.0),
        scraped_at=scraped_at,
    )


@dataclass
class ActiveHealth:
    """The active-check view of one endpoint: its status by the thresholds, and its last load."""

    subject: str  # "backend url", for transitions
    settings: HealthCheck | None = None
    status: HealthStatus = "unknown"
    passes: int = 0
    failures: int = 0
    load: ModelServerLoad | None = None
    last_error: str | None = None

    def record_probe(
        self, ok: bool, now: float, load: ModelServerLoad | None = None, error: str | None = None
    ) -> Transition | None:
        """Count one probe; return the status change it caused, if any."""
        settings = self.settings or HealthCheck()
        if load is not None:
            self.load = load
        self.last_error = error
        if ok:
            self.passes, self.failures = self.passes + 1, 0
            if self.status != "healthy" and self.passes >= settings.healthy_threshold:
                return self._become("healthy", f"{self.passes} probes passed")
            return None
        self.failures, self.passes = self.failures + 1, 0
        if self.status != "unhealthy" and self.failures >= settings.unhealthy_threshold:
            return self._become("unhealthy", f"{self.failures} probes failed: {error}")
        return None

    def saturated(self, now: float) -> bool:
        """Whether the endpoint's load metrics say it is full, or are too old to trust."""
        settings = self.settings
        if settings is None or settings.metrics is None or self.load is None:
            return False
        if now - self.load.scraped_at > settings.metrics_stale_after:
            return True
        return (
            self.load.waiting >= settings.metrics.max_waiting
            or self.load.kv_cache_usage >= settings.metrics.max_kv_cache_usage
        )

    def _become(self, status: HealthStatus, reason: str) -> Transition:
        previous, self.status = self.status, status
        return Transition("health_check", self.subject, previous, status, reason)


@dataclass(frozen=True)
class ProbeTarget:
    """One endpoint to probe."""

    backend_name: str
    backend: Backend
    url: str
    health: ActiveHealth


def metrics_url(endpoint_url: str, path: str) -> str:
    """The metrics URL: vLLM serves it at the origin, beside the API's /v1."""
    parts = urlsplit(endpoint_url)
    return f"{parts.scheme}://{parts.netloc}{path}"


@dataclass
class HealthChecker:
    """Probes endpoints: once on demand (`probe`) or on each backend's interval (`run`)."""

    session: Callable[[], aiohttp.ClientSession]
    now: Callable[[], float]
    emit: Callable[[Transition], None]
    _tasks: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)

    async def probe(self, target: ProbeTarget) -> None:
        """Probe one endpoint now and record the result."""
        settings = target.backend.health_check or HealthCheck()
        load: ModelServerLoad | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(settings.timeout):
                if settings.metrics is not None:
                    url = metrics_url(target.url, settings.metrics.path)
                    text = await self._get(url)
                    load = parse_vllm_metrics(text, self.now())
                else:
                    await self._get(target.url.rstrip("/") + "/models")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        transition = target.health.record_probe(error is None, self.now(), load, error)
        if transition is not None:
            self.emit(transition)

    async def _get(self, url: str) -> str:
        async with self.session().get(url) as response:
            if response.status >= 400:
                raise ValueError(f"probe answered HTTP {response.status}")
            return await response.text()

    def follow(self, targets: list[ProbeTarget]) -> None:
        """Run exactly one probing task per target; stop the tasks of targets that went away."""
        wanted = {(t.backend_name, t.url): t for t in targets}
        for key in list(self._tasks):
            if key not in wanted:
                self._tasks.pop(key).cancel()
        for key, target in wanted.items():
            if key not in self._tasks:
                name = f"health-check {target.backend_name} {target.url}"
                task = asyncio.create_task(self._loop(target), name=name)
                self._tasks[key] = task

    async def _loop(self, target: ProbeTarget) -> None:
        settings = target.backend.health_check or HealthCheck()
        while True:
            try:
                await self.probe(target)
            except Exception:  # a probe must never end the loop; say why it failed
                log.exception("health check of %s %s failed", target.backend_name, target.url)
            await asyncio.sleep(settings.interval)

    async def stop(self) -> None:
        """Cancel every probing task."""
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
