"""Accounting: what a request cost, from its token usage and the route table's prices.

Called by the listener when a request ends (for streams, when the stream ends). It computes;
it never records or exports anything.
"""

from __future__ import annotations

from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.routetable import Pricing

_PER_MILLION = 1_000_000


def request_cost(usage: Usage | None, pricing: Pricing) -> float:
    """US dollars for the request; cached input tokens are billed at the cached price."""
    if usage is None:
        return 0.0
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_price = (
        pricing.cached_input_per_million
        if pricing.cached_input_per_million is not None
        else pricing.input_per_million
    )
    return (
        (usage.input_tokens - cached) * pricing.input_per_million
        + cached * cached_price
        + usage.output_tokens * pricing.output_per_million
    ) / _PER_MILLION
