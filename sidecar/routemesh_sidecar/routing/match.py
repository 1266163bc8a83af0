"""Route match: the first route of the table whose match holds takes the request.

Called by the pipeline. A match holds when every part that is set holds: the requested model is
one of the route's models, every header matches, every signal is within its bounds (the learned
router's score among them), and the last user message is in one of the route's categories.
Categories are checked last, and only when the rest holds: they cost the most. Regular
expressions are compiled once per route table and the categories' example vectors once per table
(the caller's `CategoryIndex`), not per request.
Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from routemesh_sidecar.routetable import HeaderMatch, Route, RouteMatch, Signals
from routemesh_sidecar.routing.categories import CategoryIndex
from routemesh_sidecar.routing.contracts import RoutingRequest


@lru_cache(maxsize=1024)
def _pattern(expression: str) -> re.Pattern[str]:
    return re.compile(expression)


def header_matches(rule: HeaderMatch, headers: Mapping[str, str]) -> bool:
    """Whether the request's header satisfies the rule (names are lower-cased by the caller)."""
    value = headers.get(rule.name.lower())
    if value is None:
        return False
    if rule.type == "Exact":
        return value == rule.value
    return _pattern(rule.value).fullmatch(value) is not None


def signals_match(
    rule: Signals, request: RoutingRequest, categories: CategoryIndex | None = None
) -> bool:
    """Whether the request's signals are within the rule's bounds, and in one of its categories.

    Without a `categories` index (a caller outside the pipeline), the examples' vectors are
    built for this call.
    """
    if not rule.required:
        return True
    signals = request.signals
    # One chain, so that a bound that fails spares the dearer checks after it (the markers and
    # the language read the text).
    holds = (
        (rule.min_tokens is None or signals.prompt_tokens >= rule.min_tokens)
        and (rule.max_tokens is None or signals.prompt_tokens <= rule.max_tokens)
        and (rule.min_turns is None or signals.user_turns >= rule.min_turns)
        and (rule.max_turns is None or signals.user_turns <= rule.max_turns)
        and (rule.tools_present is None or signals.tools_present == rule.tools_present)
        and (not rule.modalities or bool(rule.modalities & signals.modalities))
        and (rule.code_present is None or signals.code_present == rule.code_present)
        and (not rule.keywords or _any_keyword(rule.keywords, signals.text))
        and (rule.reasoning is None or request.reasoning == rule.reasoning)
        and (not rule.languages or request.language in rule.languages)
        and (
            rule.learned_router is None
            or request.needs_strong_model(rule.learned_router.strong_share)
        )
    )
    if not holds:
        return False
    return not rule.categories or _in_a_category(rule, request, categories or CategoryIndex())


def _in_a_category(rule: Signals, request: RoutingRequest, categories: CategoryIndex) -> bool:
    """Classify the last user message; what was found is kept on the request, for the trace."""
    found = categories.classify(rule, request)
    if found is None:
        return False
    request.classified.append(found)
    return found.matched


def _any_keyword(keywords: frozenset[str], text: str) -> bool:
    lowered = text.lower()
    return any(keyword.lower() in lowered for keyword in keywords)


def route_matches(
    match: RouteMatch, request: RoutingRequest, categories: CategoryIndex | None = None
) -> bool:
    """Whether the request satisfies every part of the match."""
    if match.models and request.model not in match.models:
        return False
    for rule in match.headers:
        if not header_matches(rule, request.headers):
            return False
    return signals_match(match.signals, request, categories)


def first_matching_route(
    routes: tuple[Route, ...], request: RoutingRequest, categories: CategoryIndex | None = None
) -> Route | None:
    """The first route whose match holds, or None; `categories` belongs to the routes' table."""
    for route in routes:
        if route_matches(route.match, request, categories):
            return route
    return None
