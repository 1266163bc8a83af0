"""Route tables for tests: small builders that spell out only what a test cares about.

Used by unit tests of routing and the attempt loop and by tests that run a whole sidecar in front
of fake providers. They build the sidecar's own wire model, so a test never hand-writes JSON that
could drift from it.
"""

from __future__ import annotations

from typing import Any

from routemesh_sidecar.routetable import (
    Backend,
    Credentials,
    Endpoint,
    ModelInfo,
    Pricing,
    Route,
    RouteTable,
    Target,
)


def model_info(
    context_window: int = 128_000,
    capabilities: tuple[str, ...] = ("Tools", "Vision", "JSONOutput"),
    input_price: float = 1.0,
    output_price: float = 2.0,
    cached_price: float | None = None,
    *,
    tier: str = "Standard",
) -> ModelInfo:
    """A model with prices in dollars per million tokens."""
    return ModelInfo.model_validate(
        {
            "context_window": context_window,
            "capabilities": capabilities,
            "quality_tier": tier,
            "pricing": Pricing(
                input_per_million=input_price,
                output_per_million=output_price,
                cached_input_per_million=cached_price,
            ),
        }
    )


def backend(
    url: str | list[str],
    api: str = "openai",
    models: dict[str, ModelInfo] | None = None,
    key_env: str | None = None,
    **fields: Any,
) -> Backend:
    """A backend at one URL (or several endpoints), serving `models`; other fields as keywords."""
    urls = [url] if isinstance(url, str) else url
    return Backend.model_validate(
        {
            "api": api,
            "endpoints": [Endpoint(url=u) for u in urls],
            "credentials": Credentials(env=key_env) if key_env else None,
            "models": models or {"m": model_info()},
            **fields,
        }
    )


def route(name: str, *targets: tuple[str, str] | tuple[str, str, int], **fields: Any) -> Route:
    """A route to (backend, model[, weight]) targets; other fields as keyword arguments."""
    return Route.model_validate(
        {
            "name": name,
            "targets": [
                Target(backend=t[0], model=t[1], weight=t[2] if len(t) > 2 else None)
                for t in targets
            ],
            **fields,
        }
    )


def table(
    backends: dict[str, Backend], *routes: Route, version: int = 1, **fields: Any
) -> RouteTable:
    """A route table."""
    return RouteTable.model_validate(
        {"version": version, "backends": backends, "routes": routes, **fields}
    )


def cheap_or_strong(
    cheap_url: str, strong_url: str, name: str, match: dict[str, Any]
) -> RouteTable:
    """A route `name` to "gpt-4o" on `strong_url` for what `match` takes; the rest "gpt-4o-mini".

    The shape of a cost-saving policy, with both backends' keys in OPENAI_KEY.
    """
    return table(
        {
            "cheap": backend(cheap_url, models={"gpt-4o-mini": model_info()}, key_env="OPENAI_KEY"),
            "strong": backend(strong_url, models={"gpt-4o": model_info()}, key_env="OPENAI_KEY"),
        },
        route(name, ("strong", "gpt-4o"), match=match),
        route("default", ("cheap", "gpt-4o-mini")),
    )
