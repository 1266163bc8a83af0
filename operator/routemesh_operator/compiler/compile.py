"""Compile a namespace: its RoutingPolicies and ModelBackends into one route table per policy.

The handlers call `compile_namespace` with a `Snapshot` and the tables they published before;
they publish the tables it returns and write the status it reports. One table per policy: a
policy's selector is the group of sidecars that run it. A table's version is content-addressed:
the same content keeps the previous table (and its version), new content gets the next version,
so a restarted operator republishes nothing that did not change.

What the schema cannot check is checked here and reported as a `Problem` that becomes a status
condition: references to missing backends, models a backend does not serve, missing Secrets,
backends without ready endpoints, a cascade that escalates to a cheaper model, targets that
cannot serve what their route matches (tools, images, prompt size), a route whose required data
retention none of its targets meets, routes that can never be taken, strategies the sidecars
cannot run (none, in this version), and selectors that overlap another policy's. A policy with a
problem gets no table, so nothing invalid ever reaches a sidecar. Pure: no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from routemesh_operator.api.v1alpha1.common import LabelSelector
from routemesh_operator.api.v1alpha1.kinds import ModelBackend, RoutingPolicy
from routemesh_operator.api.v1alpha1.modelbackend import Model as ApiModelSpec
from routemesh_operator.api.v1alpha1.routingpolicy import ModelRef, Privacy, RoutingPolicySpec
from routemesh_operator.api.v1alpha1.routingpolicy import Route as ApiRoute
from routemesh_operator.compiler.backends import Problem, backend_name, compile_backend
from routemesh_operator.compiler.inputs import CompilerSettings, Snapshot
from routemesh_operator.compiler.routes import compile_route, required_retention
from routemesh_sidecar import routetable as wire

# Strategies in the API that no sidecar of this version can run; a policy using one is refused
# (Accepted=False), rather than routed differently from what it asks. This version runs them all.
SIDECAR_UNSUPPORTED_STRATEGIES: frozenset[str] = frozenset()


@dataclass
class PolicyOutcome:
    """What became of one policy: its table, or the problems that kept it from having one."""

    table: wire.RouteTable | None = None
    not_accepted: list[Problem] = field(default_factory=list)  # the policy itself is invalid
    unresolved: list[Problem] = field(default_factory=list)  # what it refers to is missing
    notes: list[str] = field(default_factory=list)  # accepted, but something is ignored


@dataclass
class CompileResult:
    """Per policy and per backend, by name."""

    policies: dict[str, PolicyOutcome] = field(default_factory=dict)
    backends: dict[str, Problem | None] = field(default_factory=dict)
    ready_endpoints: dict[str, int] = field(default_factory=dict)  # per backend


def policy_name(policy: RoutingPolicy) -> str:
    """The policy's name."""
    return str(policy.metadata["name"])


def compile_namespace(
    snapshot: Snapshot,
    previous: Mapping[str, wire.RouteTable] | None = None,
    settings: CompilerSettings | None = None,
) -> CompileResult:
    """Compile every policy of the namespace; `previous` holds the last tables, by policy name."""
    settings = settings or CompilerSettings()
    previous = previous or {}
    result = CompileResult()
    compiled: dict[str, wire.Backend] = {}
    backends: dict[str, ModelBackend] = {}
    for backend in snapshot.backends:
        name = backend_name(backend)
        backends[name] = backend
        built = compile_backend(backend, snapshot, settings)
        result.backends[name] = built if isinstance(built, Problem) else None
        result.ready_endpoints[name] = 0 if isinstance(built, Problem) else len(built.endpoints)
        if not isinstance(built, Problem):
            compiled[name] = built
    overlaps = _overlaps(snapshot.policies)
    for policy in snapshot.policies:
        name = policy_name(policy)
        outcome = _compile_policy(policy, backends, result.backends)
        if name in overlaps:
            outcome.not_accepted.append(overlaps[name])
        if not outcome.not_accepted and not outcome.unresolved:
            outcome.table = _versioned(
                _table(policy, compiled, snapshot.namespace), previous.get(name)
            )
        result.policies[name] = outcome
    return result


def _compile_policy(
    policy: RoutingPolicy,
    backends: Mapping[str, ModelBackend],
    backend_problems: Mapping[str, Problem | None],
) -> PolicyOutcome:
    outcome = PolicyOutcome()
    spec = policy.spec
    for route in spec.routes:
        _check_route(route, backends, backend_problems, outcome)
        _check_retention(route, spec.privacy, backends, outcome)
    for route in spec.shadow.routes if spec.shadow else ():
        _check_route(route, backends, backend_problems, outcome, kind="shadow route")
    _check_reachable(spec.routes, outcome)
    return outcome


def _check_route(
    route: ApiRoute,
    backends: Mapping[str, ModelBackend],
    backend_problems: Mapping[str, Problem | None],
    outcome: PolicyOutcome,
    kind: str = "route",
) -> None:
    where = f"{kind} {route.name!r}"
    if route.strategy.type in SIDECAR_UNSUPPORTED_STRATEGIES:
        outcome.not_accepted.append(
            Problem(
                "StrategyNotSupported",
                f"{where}: strategy {route.strategy.type} is not supported by this version's "
                "sidecars; use another strategy",
            )
        )
    for ref in route.content_policy_fallbacks or ():
        _check_reference(where, ref, backends, backend_problems, outcome)
    prices: list[tuple[float, str]] = []
    for target in route.targets:
        backend = backends.get(target.backend)
        if backend is None:
            outcome.unresolved.append(
                Problem(
                    "BackendNotFound",
                    f"{where}: ModelBackend {target.backend!r} does not exist in this namespace",
                )
            )
            continue
        models = {m.name: m for m in backend.spec.models}
        model = models.get(target.model)
        if model is None:
            outcome.unresolved.append(
                Problem(
                    "ModelNotServed",
                    f"{where}: ModelBackend {target.backend!r} does not serve model "
                    f"{target.model!r}; it serves {', '.join(sorted(models))}",
                )
            )
            continue
        _check_target_fits(route, target.backend, model, outcome)
        problem = backend_problems.get(target.backend)
        if problem is not None:
            outcome.unresolved.append(
                Problem(
                    "BackendNotResolved",
                    f"{where}: ModelBackend {target.backend!r} cannot be used: {problem.message}",
                )
            )
        prices.append((float(model.pricing.input_per_million), target.model))
    if route.strategy.type == "Cascade":
        for (cheaper, first), (dearer, then) in itertools.pairwise(prices):
            if dearer < cheaper:
                outcome.not_accepted.append(
                    Problem(
                        "CascadeNotEscalating",
                        f"{where}: a cascade must escalate to dearer models, but {then!r} "
                        f"costs less than {first!r} before it; order the targets cheapest first",
                    )
                )


def _check_reference(
    where: str,
    ref: ModelRef,
    backends: Mapping[str, ModelBackend],
    backend_problems: Mapping[str, Problem | None],
    outcome: PolicyOutcome,
) -> None:
    """A model named outside the targets (a content-policy fallback) must exist and be usable."""
    backend_name, model = ref.backend, ref.model
    backend = backends.get(backend_name)
    if backend is None:
        outcome.unresolved.append(
            Problem(
                "BackendNotFound",
                f"{where}: contentPolicyFallbacks names ModelBackend {backend_name!r}, which does "
                "not exist in this namespace",
            )
        )
        return
    served = {m.name for m in backend.spec.models}
    if model not in served:
        outcome.unresolved.append(
            Problem(
                "ModelNotServed",
                f"{where}: contentPolicyFallbacks names model {model!r}, which ModelBackend "
                f"{backend_name!r} does not serve; it serves {', '.join(sorted(served))}",
            )
        )
        return
    problem = backend_problems.get(backend_name)
    if problem is not None:
        outcome.unresolved.append(
            Problem(
                "BackendNotResolved",
                f"{where}: ModelBackend {backend_name!r} cannot be used: {problem.message}",
            )
        )


def _check_retention(
    route: ApiRoute,
    privacy: Privacy | None,
    backends: Mapping[str, ModelBackend],
    outcome: PolicyOutcome,
) -> None:
    """A route that requires a retention level needs a target that meets it.

    Targets that do not are kept out of its requests by the sidecar; the status says which.
    """
    required = required_retention(route, privacy)
    if required is None:
        return
    rank = wire.RETENTION_ORDER[required]
    retained = {
        target.backend: _retention_of(backends[target.backend])
        for target in route.targets
        if target.backend in backends
    }
    too_loose = {
        name: level for name, level in retained.items() if wire.RETENTION_ORDER[level] > rank
    }
    if not retained or len(too_loose) < len(retained):
        if too_loose:
            outcome.notes.append(
                f"route {route.name!r} requires retention {required}, so it never sends to "
                + ", ".join(f"{name} ({level})" for name, level in sorted(too_loose.items()))
            )
        return
    outcome.not_accepted.append(
        Problem(
            "RetentionNotMet",
            f"route {route.name!r} requires data retention {required} or stricter, but none of "
            "its targets meets it ("
            + ", ".join(f"{name} retains {level}" for name, level in sorted(too_loose.items()))
            + "); add a target whose ModelBackend declares spec.dataPolicy.retention "
            f"{required}, or relax privacy.retention",
        )
    )


def _retention_of(backend: ModelBackend) -> wire.Retention:
    """What a backend retains; one that does not say counts as Standard."""
    policy = backend.spec.data_policy
    return policy.retention if policy is not None else "Standard"


def _check_target_fits(
    route: ApiRoute, backend: str, model: ApiModelSpec, outcome: PolicyOutcome
) -> None:
    """A target must be able to serve every request its route matches."""
    signals = route.match.signals if route.match else None
    if signals is None:
        return
    where = f"route {route.name!r}: {backend}/{model.name}"
    capabilities = set(model.capabilities or ())
    if signals.tools_present and "Tools" not in capabilities:
        outcome.not_accepted.append(
            Problem(
                "CapabilityMissing",
                f"{where} cannot call tools, but the route matches only requests with tools; "
                "add Tools to the model's capabilities, or pick another target",
            )
        )
    if "Image" in (signals.modalities or ()) and "Vision" not in capabilities:
        outcome.not_accepted.append(
            Problem(
                "CapabilityMissing",
                f"{where} cannot read images, but the route matches requests with images; "
                "add Vision to the model's capabilities, or pick another target",
            )
        )
    smallest = signals.tokens.min if signals.tokens else None
    if smallest is not None and smallest > model.context_window:
        outcome.not_accepted.append(
            Problem(
                "ContextWindowTooSmall",
                f"{where} has a context window of {model.context_window} tokens, but the route "
                f"matches only prompts of at least {smallest}; pick a larger-context model",
            )
        )


def _check_reachable(routes: Sequence[ApiRoute], outcome: PolicyOutcome) -> None:
    """Routes after one that matches every request can never be taken."""
    for index, route in enumerate(routes[:-1]):
        if _matches_everything(route):
            later = ", ".join(repr(r.name) for r in routes[index + 1 :])
            outcome.not_accepted.append(
                Problem(
                    "RouteUnreachable",
                    f"route {route.name!r} matches every request, so the routes after it "
                    f"({later}) are never taken; move it last, or give it a match",
                )
            )
            return


def _matches_everything(route: ApiRoute) -> bool:
    match = route.match
    if match is None:
        return True
    signals = match.signals
    no_signals = signals is None or not any(
        value not in (None, [], {}) for value in signals.model_dump().values()
    )
    return not match.models and not match.headers and no_signals


def _table(
    policy: RoutingPolicy, backends: Mapping[str, wire.Backend], namespace: str
) -> wire.RouteTable:
    spec = policy.spec
    name = policy_name(policy)
    routes = [compile_route(name, route, spec.defaults, spec.privacy) for route in spec.routes]
    shadow = _shadow(name, spec)
    every = routes + list(shadow.routes if shadow else ())
    used = {t.backend for r in every for t in (*r.targets, *r.content_policy_fallbacks)}
    telemetry = spec.telemetry
    return wire.RouteTable(
        version=0,
        sources=(
            wire.SourceRef(
                kind="RoutingPolicy",
                namespace=namespace,
                name=name,
                generation=int(policy.metadata.get("generation", 0)),
            ),
        ),
        tier_header=(spec.tier_header or "x-routemesh-tier").lower(),
        backends={n: backends[n] for n in sorted(used)},
        routes=tuple(routes),
        shadow=shadow,
        telemetry=wire.Telemetry(
            capture_content=bool(telemetry and telemetry.capture_content),
            sampling_ratio=float(telemetry.sampling_ratio)
            if telemetry and telemetry.sampling_ratio
            else 1.0,
        ),
        category_matching=_category_matching(spec),
    )


def _category_matching(spec: RoutingPolicySpec) -> wire.CategoryMatching | None:
    """The policy's matching, or None for the default (which the table then leaves out)."""
    given = spec.category_matching
    if given is None or given == type(given)():
        return None
    return wire.CategoryMatching(
        tier=given.tier or "Lexical",
        method=given.method or "BestExample",
        k=given.k or 3,
        lexical_weight=float(given.lexical_weight or 0),
    )


def _shadow(policy: str, spec: RoutingPolicySpec) -> wire.Shadow | None:
    """The shadow routes, compiled as the live ones are, and the share of requests mirrored."""
    if spec.shadow is None:
        return None
    return wire.Shadow(
        routes=tuple(
            compile_route(policy, route, spec.defaults, spec.privacy)
            for route in spec.shadow.routes
        ),
        mirror_percent=float(spec.shadow.mirror.percent) if spec.shadow.mirror else 0.0,
    )


def _versioned(table: wire.RouteTable, previous: wire.RouteTable | None) -> wire.RouteTable:
    """The previous table when nothing changed; else this content with the next version."""
    if previous is not None and previous.content_hash == table.content_hash:
        return previous
    version = previous.version + 1 if previous is not None else 1
    try:
        return wire.RouteTable.model_validate({**table.model_dump(), "version": version})
    except ValidationError as exc:  # a compiler bug, not the user's: say so loudly
        raise AssertionError(f"compiled an invalid route table: {exc}") from exc


def _overlaps(policies: tuple[RoutingPolicy, ...]) -> dict[str, Problem]:
    """Policies whose selectors may pick the same pod as an older policy's."""
    ordered = sorted(
        policies, key=lambda p: (str(p.metadata.get("creationTimestamp", "")), policy_name(p))
    )
    problems: dict[str, Problem] = {}
    for index, policy in enumerate(ordered):
        for older in ordered[:index]:
            if _may_overlap(policy.spec.selector, older.spec.selector):
                problems[policy_name(policy)] = Problem(
                    "SelectorOverlap",
                    f"the selector may pick the same pods as the older RoutingPolicy "
                    f"{policy_name(older)!r}, and a sidecar runs one policy; make the selectors "
                    "disjoint (for example with a distinct matchLabels value)",
                )
                break
    return problems


def _may_overlap(a: LabelSelector, b: LabelSelector) -> bool:
    """Whether some set of labels could satisfy both selectors (conservative: when unsure, yes).

    Two selectors are disjoint when one requires a label value the other excludes: different
    matchLabels values for a key, an In set and a value outside it, or Exists against
    DoesNotExist.
    """
    required_a, required_b = _required(a), _required(b)
    for key in required_a.keys() & required_b.keys():
        values_a, values_b = required_a[key], required_b[key]
        if None in values_a or None in values_b:
            continue  # Exists on one side: any value of the other fits
        if not values_a & values_b:
            return False
    absent_a, absent_b = _absent(a), _absent(b)
    return not (absent_a & set(required_b)) and not (absent_b & set(required_a))


def _required(selector: LabelSelector) -> dict[str, set[str | None]]:
    """Per key, the values a pod may have (None in the set: any value)."""
    allowed: dict[str, set[str | None]] = {}
    for key, value in (selector.match_labels or {}).items():
        allowed[key] = _narrow(allowed.get(key), {value})
    for requirement in selector.match_expressions or ():
        if requirement.operator == "In":
            allowed[requirement.key] = _narrow(
                allowed.get(requirement.key), set(requirement.values or ())
            )
        elif requirement.operator == "Exists":
            allowed.setdefault(requirement.key, {None})
    return allowed


def _narrow(current: set[str | None] | None, values: set[str]) -> set[str | None]:
    if current is None or current == {None}:
        return set(values)
    return current & set(values)


def _absent(selector: LabelSelector) -> set[str]:
    return {r.key for r in selector.match_expressions or () if r.operator == "DoesNotExist"}
