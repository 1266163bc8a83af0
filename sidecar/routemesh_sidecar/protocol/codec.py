"""Compact JSON encoding, in one place, for everything the sidecar writes as JSON.

Upstream bodies the sidecar builds or translates, error bodies and SSE events for the downstream,
and content attributes for spans all go through here, so they are encoded the same way: orjson
(already the sidecar's parser), compact, UTF-8 as is. Pure.
"""

from __future__ import annotations

from typing import Any

import orjson


def encode_json(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON bytes."""
    return orjson.dumps(value)


def dumps_json(value: Any) -> str:
    """`value` as a compact JSON string."""
    return orjson.dumps(value).decode()
