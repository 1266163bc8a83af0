"""What the CLI reads from sidecars' admin endpoints: the table each runs, its health, its costs.

A sidecar's admin listener (`/config_dump`, `/metrics`; port 15000 unless the pod's annotation
says otherwise) is on the pod's loopback, so the user gives its URL with `--sidecar`, for example
after `kubectl port-forward pod/NAME 15000`. `sidecar_status` summarises one sidecar's table,
its ACK or NACK and its breakers, ejections and health checks; `cost_window` reads the cost and
token counters twice, a window apart, and gives what was spent in between. Called by
`cli.main`; it reads and never changes a sidecar.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from routemesh_operator.cli.errors import UNREACHABLE, CliError

# Counter samples by (name, sorted labels).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch(url: str, path: str, timeout: float = 5.0) -> bytes:
    """GET one admin path of a sidecar; an unreachable sidecar is an error that says why."""
    target = url.rstrip("/") + path
    if not target.startswith(("http://", "https://")):
        raise CliError(f"--sidecar {url!r} is not an http(s) URL", UNREACHABLE)
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:  # noqa: S310 (checked)
            body: bytes = response.read()
            return body
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(
            f"cannot reach the sidecar's admin endpoint at {target} ({exc}); give its admin "
            "port (15000 by default), for example after `kubectl port-forward pod/NAME 15000`",
            UNREACHABLE,
        ) from exc


def sidecar_status(url: str) -> dict[str, Any]:
    """One sidecar: its table version, ACK/NACK, and what its health mechanisms say now."""
    try:
        dump = json.loads(fetch(url, "/config_dump"))
    except ValueError as exc:
        raise CliError(
            f"{url}/config_dump is not JSON: is that a RouteMesh sidecar's admin port?",
            UNREACHABLE,
        ) from exc
    table = dump.get("route_table") or {}
    error = dump.get("last_error")
    state = "NACK" if error else ("ACK" if table else "NO TABLE")
    backends = (dump.get("health") or {}).get("backends") or {}
    return {
        "sidecar": url,
        "routeTableVersion": table.get("version"),
        "state": state,
        "lastError": error,
        "openBreakers": sorted(
            name
            for name, entry in backends.items()
            if any(b["state"] != "closed" for b in entry.get("breakers") or ())
        ),
        "ejectedEndpoints": sorted(
            url
            for entry in backends.values()
            for url, endpoint in (entry.get("endpoints") or {}).items()
            if any(e["ejected"] for e in endpoint.get("outlier_detection") or ())
        ),
        "failingHealthChecks": sorted(
            url
            for entry in backends.values()
            for url, endpoint in (entry.get("endpoints") or {}).items()
            if (endpoint.get("health_check") or {}).get("status") == "unhealthy"
        ),
        "sharedHealth": [
            f"{s['backend']} ({s['reason']})"
            for s in (dump.get("health") or {}).get("shared") or ()
        ],
    }


def counters(url: str) -> Samples:
    """The sidecar's cost and token counters, by name and labels."""
    text = fetch(url, "/metrics").decode()
    wanted = {"routemesh_cost_usd_total", "routemesh_tokens_total"}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in wanted
    }


def cost_window(
    urls: Sequence[str],
    window_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Cost by route, backend and tier, and tokens by backend and kind, over the window.

    A window of 0 gives the totals since each sidecar started.
    """
    before: list[Samples] = [{} for _ in urls]
    if window_seconds > 0:
        before = [counters(url) for url in urls]
        sleep(window_seconds)
    cost: dict[tuple[str, str, str], float] = defaultdict(float)
    tokens: dict[tuple[str, str], float] = defaultdict(float)
    for url, earlier in zip(urls, before, strict=True):
        for (name, labels), value in counters(url).items():
            previous = earlier.get((name, labels), 0.0)
            spent = value if value < previous else value - previous  # a restart reset it
            label = dict(labels)
            if name == "routemesh_cost_usd_total":
                cost[label.get("route", ""), label.get("backend", ""), label.get("tier", "")] += (
                    spent
                )
            else:
                tokens[label.get("backend", ""), label.get("kind", "")] += spent
    rows: list[dict[str, Any]] = [
        {"route": r, "backend": b, "tier": t, "usd": round(usd, 8)}
        for (r, b, t), usd in sorted(cost.items())
        if usd > 0
    ]
    return {
        "windowSeconds": window_seconds,
        "sidecars": list(urls),
        "costUsd": rows,
        "totalUsd": round(sum(row["usd"] for row in rows), 8),
        "tokens": [
            {"backend": b, "kind": k, "tokens": int(n)}
            for (b, k), n in sorted(tokens.items())
            if n > 0
        ],
    }
