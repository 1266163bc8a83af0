"""The active health check's state machine and vLLM metrics, on a virtual clock (no I/O)."""

import pytest

from routemesh_sidecar.routetable import HealthCheck, MetricsScrape
from routemesh_sidecar.upstream.breaker import Transition
from routemesh_sidecar.upstream.health import (
    ActiveHealth,
    HealthStatus,
    ModelServerLoad,
    metrics_url,
    parse_vllm_metrics,
)

pytestmark = pytest.mark.timeout(10)

T0 = 200.0
SUBJECT = "b http://e/v1"


def health(check: HealthCheck | None = None, **fields: object) -> ActiveHealth:
    settings = check or HealthCheck.model_validate(
        {"unhealthy_threshold": 3, "healthy_threshold": 2, **fields}
    )
    return ActiveHealth(SUBJECT, settings)


def status(health: ActiveHealth) -> HealthStatus:
    """The status, read through a call so that mypy does not narrow it across probes."""
    return health.status


def scraped(health: ActiveHealth, waiting: float = 0, kv: float = 0.0, at: float = T0) -> None:
    health.load = ModelServerLoad(waiting=waiting, running=0, kv_cache_usage=kv, scraped_at=at)


# ---------------------------------------------------------------- status transitions


def test_unknown_becomes_healthy_after_healthy_threshold_passes():
    h = health()
    assert status(h) == "unknown"
    assert h.record_probe(True, T0) is None
    assert (status(h), h.passes) == ("unknown", 1)
    assert h.record_probe(True, T0 + 10) == Transition(
        "health_check", SUBJECT, "unknown", "healthy", "2 probes passed"
    )
    assert status(h) == "healthy"


def test_unknown_becomes_unhealthy_after_unhealthy_threshold_failures():
    h = health()
    assert h.record_probe(False, T0, error="e1") is None
    assert h.record_probe(False, T0 + 10, error="e2") is None
    assert status(h) == "unknown"
    assert h.record_probe(False, T0 + 20, error="ConnectionRefusedError") == Transition(
        "health_check",
        SUBJECT,
        "unknown",
        "unhealthy",
        "3 probes failed: ConnectionRefusedError",
    )
    assert (status(h), h.failures, h.passes) == ("unhealthy", 3, 0)
    assert h.last_error == "ConnectionRefusedError"


def test_healthy_becomes_unhealthy_only_after_failures_in_a_row():
    h = health(healthy_threshold=1)
    assert h.record_probe(True, T0) is not None
    h.record_probe(False, T0 + 10, error="x")
    h.record_probe(False, T0 + 20, error="x")
    assert h.record_probe(True, T0 + 30) is None  # resets the failures; already healthy
    assert (status(h), h.failures) == ("healthy", 0)
    h.record_probe(False, T0 + 40, error="x")
    h.record_probe(False, T0 + 50, error="x")
    assert status(h) == "healthy"
    transition = h.record_probe(False, T0 + 60, error="timeout")
    assert transition == Transition(
        "health_check", SUBJECT, "healthy", "unhealthy", "3 probes failed: timeout"
    )


def test_unhealthy_becomes_healthy_after_passes_in_a_row():
    h = health()
    for i in range(3):
        h.record_probe(False, T0 + i, error="x")
    assert status(h) == "unhealthy"
    assert h.record_probe(True, T0 + 10) is None
    assert h.record_probe(False, T0 + 20, error="x") is None  # already unhealthy: no transition
    assert h.passes == 0
    assert h.record_probe(True, T0 + 30) is None
    assert h.record_probe(True, T0 + 40) == Transition(
        "health_check", SUBJECT, "unhealthy", "healthy", "2 probes passed"
    )
    assert h.last_error is None


def test_steady_results_cause_no_further_transitions():
    h = health(healthy_threshold=1, unhealthy_threshold=1)
    assert h.record_probe(True, T0) is not None
    assert [h.record_probe(True, T0 + i) for i in range(1, 5)] == [None] * 4
    assert h.record_probe(False, T0 + 5, error="x") is not None
    assert [h.record_probe(False, T0 + i, error="x") for i in range(6, 10)] == [None] * 4
    assert status(h) == "unhealthy"


def test_without_settings_the_default_thresholds_apply():
    h = ActiveHealth(SUBJECT)  # HealthCheck(): unhealthy after 3, healthy after 1
    assert h.record_probe(True, T0) is not None
    assert status(h) == "healthy"
    assert h.record_probe(False, T0, error="x") is None
    assert h.record_probe(False, T0, error="x") is None
    assert h.record_probe(False, T0, error="x") is not None
    assert status(h) == "unhealthy"


def test_a_probe_keeps_the_last_load_it_read():
    h = health()
    first = ModelServerLoad(waiting=1, running=2, kv_cache_usage=0.3, scraped_at=T0)
    h.record_probe(True, T0, load=first)
    assert h.load == first
    h.record_probe(False, T0 + 10, error="timeout")
    assert h.load == first
    assert h.last_error == "timeout"


# ---------------------------------------------------------------- saturation


METRICS = HealthCheck(interval=10, metrics=MetricsScrape(max_waiting=8, max_kv_cache_usage=0.9))


def test_stale_after_defaults_to_three_intervals():
    assert METRICS.metrics_stale_after == 30
    assert HealthCheck(interval=4).metrics_stale_after == 12
    explicit = HealthCheck(interval=10, metrics=MetricsScrape(stale_after=7))
    assert explicit.metrics_stale_after == 7


def test_saturated_by_waiting_requests_or_kv_cache_usage():
    h = ActiveHealth(SUBJECT, METRICS)
    assert h.saturated(T0) is False  # nothing scraped yet
    scraped(h, waiting=7, kv=0.89)
    assert h.saturated(T0) is False
    scraped(h, waiting=8)
    assert h.saturated(T0) is True
    scraped(h, kv=0.9)
    assert h.saturated(T0) is True


def test_metrics_older_than_stale_after_count_as_saturated():
    h = ActiveHealth(SUBJECT, METRICS)
    scraped(h, at=T0)
    assert h.saturated(T0 + 30) is False
    assert h.saturated(T0 + 30.001) is True
    h.record_probe(True, T0 + 40, load=ModelServerLoad(0, 0, 0.0, scraped_at=T0 + 40))
    assert h.saturated(T0 + 40) is False


def test_an_explicit_stale_after_is_used():
    h = ActiveHealth(SUBJECT, HealthCheck(interval=10, metrics=MetricsScrape(stale_after=5)))
    scraped(h, at=T0)
    assert h.saturated(T0 + 5) is False
    assert h.saturated(T0 + 5.5) is True


def test_never_saturated_without_metrics_scraping():
    for settings in (None, HealthCheck()):
        h = ActiveHealth(SUBJECT, settings)
        scraped(h, waiting=1000, kv=1.0, at=0.0)
        assert h.saturated(T0 + 10_000) is False


# ---------------------------------------------------------------- vLLM metrics


VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama"} 3.0
vllm:num_requests_running{model_name="qwen"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama"} 4.0
vllm:num_requests_waiting{model_name="qwen"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="llama"} 0.25
vllm:kv_cache_usage_perc{model_name="qwen"} 0.75
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="llama"} 12345.0
"""


def test_parse_vllm_metrics_sums_queues_over_models_and_takes_the_fullest_cache():
    assert parse_vllm_metrics(VLLM_TEXT, T0) == ModelServerLoad(
        waiting=9.0, running=5.0, kv_cache_usage=0.75, scraped_at=T0
    )


def test_parse_vllm_metrics_reads_the_old_gpu_cache_gauge():
    text = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 1
"""
    assert parse_vllm_metrics(text, T0) == ModelServerLoad(
        waiting=1.0, running=0.0, kv_cache_usage=0.5, scraped_at=T0
    )


def test_parse_vllm_metrics_without_labels():
    assert parse_vllm_metrics("vllm:num_requests_running 2\n", T0) == ModelServerLoad(
        waiting=0.0, running=2.0, kv_cache_usage=0.0, scraped_at=T0
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n",
        "<html><body>Not Found</body></html>",
    ],
)
def test_parse_vllm_metrics_refuses_text_without_the_gauges(text: str):
    with pytest.raises(ValueError):  # noqa: PT011  (any ValueError: both causes say "no load")
        parse_vllm_metrics(text, T0)


def test_metrics_url_is_at_the_origin():
    assert metrics_url("http://vllm.ns:8000/v1", "/metrics") == "http://vllm.ns:8000/metrics"
    assert metrics_url("https://h/a/b/", "/m") == "https://h/m"
