"""`make demo` runs from start to end and shows what it promises (the README's first command)."""

from __future__ import annotations

import re

import pytest

from routemesh_testing import demo

pytestmark = pytest.mark.timeout(300)


def counts(line: str) -> dict[str, int]:
    return {key: int(value) for key, value in re.findall(r"([\w-]+)=(\d+)", line)}


def summary_line(shown: str, prefix: str) -> str:
    [line] = [line.strip() for line in shown.splitlines() if line.strip().startswith(prefix)]
    return line


def test_the_demo_routes_around_outages_and_a_429_storm_and_links_a_failover_trace(
    control_plane: object, trace_backend: object, capfd: pytest.CaptureFixture[str]
):
    # `control_plane` and `trace_backend` only make sure the binaries exist and Phoenix is
    # installed; the demo starts its own of each.
    assert demo.main(["--no-hold"]) == 0
    shown = capfd.readouterr().out
    for pod in ("chat-app", "code-assistant", "doc-summarizer"):
        assert f"{pod}: the webhook injected initContainers=['routemesh-sidecar']" in shown
    assert re.search(r"routingpolicy.routemesh.dev/shop\s+True\s+3\s+3\s", shown), "3 in sync"
    assert re.search(r"modelbackend.routemesh.dev/llama\s+VLLM\s+True\s+1\s", shown)

    assert summary_line(shown, "requests:") == "requests: 108, client errors: 0"
    per_backend = counts(summary_line(shown, "requests per backend:"))
    assert set(per_backend) == {"economy", "frontier", "llama"}
    assert sum(per_backend.values()) == 108
    assert counts(summary_line(shown, "requests per route:")) == {
        "chat": 36,
        "code": 36,
        "documents": 36,
    }
    fallbacks = summary_line(shown, "fallbacks:")
    by_phase = counts(fallbacks.partition("(by phase:")[2])
    assert set(by_phase) >= {"economy-down", "429-retry-after", "429-bare"}, fallbacks
    assert "all-up" not in by_phase, "nothing falls back while every provider is up"
    openings = summary_line(shown, "circuit breaker openings")
    assert int(openings.rpartition(" ")[2]) >= 1
    saved = re.search(r"\((\d+)% saved\)", summary_line(shown, "cost:"))
    assert saved is not None
    assert int(saved.group(1)) >= 50, "cheap backends took the chat and the documents"
    assert re.search(r"latency at the app: p50 [\d.]+ ms, p99 [\d.]+ ms", shown)
    # The demo found this failover's route span in Phoenix through its API before printing it.
    assert re.search(
        r"the trace of a failover, in Phoenix: http://127\.0\.0\.1:\d+/redirects/traces/[0-9a-f]{32}",
        shown,
    )
