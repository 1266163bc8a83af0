"""The `routemesh` command (and `kubectl routemesh`): arguments, the three commands, exit codes.

    routemesh status  [-n NS | -A] [--sidecar URL ...]
    routemesh explain POLICY (--prompt TEXT | --body-file FILE) [--model M] [-H 'Name: value']
    routemesh cost    --sidecar URL [...] [--window SECONDS]

Every command takes `-o table|json|yaml`, `--kubeconfig` and `--context`. Exit codes (in
`cli.errors`): 0 all is well; 1 the command found a problem (a policy or backend not valid,
a sidecar that refused its table, a request no route takes); 2 bad arguments; 3 not found;
4 the cluster or a sidecar cannot be reached; 5 the API server refused us. Errors go to stderr
and say what to do. This module parses, dispatches and prints; the reads are in `cluster` and
`sidecars`, the dry run in `explain`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from routemesh_operator import __version__
from routemesh_operator.cli import render
from routemesh_operator.cli.cluster import (
    Cluster,
    NotInjected,
    list_objects,
    route_table_json,
    uninjected_pods,
)
from routemesh_operator.cli.errors import FINDING, OK, USAGE, CliError
from routemesh_operator.cli.explain import ExplainRequest, explain
from routemesh_operator.cli.sidecars import cost_window, sidecar_status
from routemesh_operator.kube import KubeApi


def parser() -> argparse.ArgumentParser:
    """The argument parser, with the common flags accepted after the command too."""
    root = argparse.ArgumentParser(
        description="What RouteMesh runs in a cluster, and why a request goes where it goes.",
    )  # no fixed prog: it is `routemesh`, or `kubectl-routemesh` when kubectl runs it
    _common_flags(root, defaults=True)
    # The commands take the same flags, so that they work after the command too; there they
    # default to nothing set, or argparse would overwrite what was given before the command.
    common = argparse.ArgumentParser(add_help=False)
    _common_flags(common, defaults=False)
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser(
        "status", parents=[common], help="policies, backends and sidecars: valid, synced, healthy"
    )
    status.add_argument("-A", "--all-namespaces", action="store_true")
    status.add_argument(
        "--sidecar",
        action="append",
        default=[],
        metavar="URL",
        help="a sidecar's admin URL (repeatable), e.g. http://127.0.0.1:15000",
    )
    explain_ = commands.add_parser(
        "explain", parents=[common], help="dry-run one request against a policy as compiled"
    )
    explain_.add_argument("policy", help="the RoutingPolicy's name")
    source = explain_.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the user message")
    source.add_argument("--body-file", type=Path, help="a whole JSON request body")
    explain_.add_argument("--model", default="default", help="the model the app asks for")
    explain_.add_argument("--api", choices=("openai", "anthropic"), default="openai")
    explain_.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    cost = commands.add_parser(
        "cost", parents=[common], help="cost and tokens by route, backend and tier, from sidecars"
    )
    cost.add_argument(
        "--sidecar",
        action="append",
        required=True,
        metavar="URL",
        help="a sidecar's admin URL (repeatable)",
    )
    cost.add_argument(
        "--window",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="measure over this window (default 0: totals since each started)",
    )
    return root


def _common_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    def default(value: str | None) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--kubeconfig",
        default=default(None),
        help="kubeconfig file (default: KUBECONFIG, ~/.kube/config)",
    )
    parser.add_argument(
        "--context", default=default(None), help="kubeconfig context (default: the current one)"
    )
    parser.add_argument(
        "-n", "--namespace", default=default(None), help="namespace (default: the context's)"
    )
    parser.add_argument("-o", "--output", choices=render.FORMATS, default=default("table"))


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None) -> int:
    """Run one command; the exit code says how it went."""
    out = stdout or sys.stdout
    args = parser().parse_args(argv)
    try:
        if args.command == "status":
            return _status(args, out)
        if args.command == "explain":
            return _explain(args, out)
        return _cost(args, out)
    except CliError as error:
        sys.stderr.write(f"routemesh {args.command}: {error.message}\n")
        return error.code


def _status(args: argparse.Namespace, out: TextIO) -> int:
    cluster = Cluster(args.kubeconfig, args.context)
    namespace = None if args.all_namespaces else (args.namespace or cluster.default_namespace)

    async def reads(api: KubeApi) -> tuple[list[Any], list[Any], NotInjected]:
        policies = await list_objects(api, "routingpolicies", namespace)
        backends = await list_objects(api, "modelbackends", namespace)
        return policies, backends, await uninjected_pods(api, namespace)

    policies, backends, not_injected = cluster.read(reads)
    report: dict[str, Any] = {
        "policies": [_policy_row(p) for p in policies],
        "backends": [_backend_row(b) for b in backends],
        "sidecars": [sidecar_status(url) for url in args.sidecar],
        "notInjected": not_injected.pods,
        # Set when the pods could not be looked for (RBAC, or no webhook configuration).
        "notInjectedUnchecked": not_injected.unchecked,
    }
    versions = {p["routeTableVersion"]: p["name"] for p in report["policies"]}
    for sidecar in report["sidecars"]:
        sidecar["policy"] = versions.get(sidecar["routeTableVersion"])
    _print_status(report, args.output, out)
    troubled = (
        any(not p["valid"] or p["rejected"] for p in report["policies"])
        or any(not b["valid"] for b in report["backends"])
        or any(s["state"] != "ACK" for s in report["sidecars"])
        or bool(not_injected.pods)
    )
    return FINDING if troubled else OK


def _true(obj: dict[str, Any], *kinds: str) -> bool:
    """Whether the object's status has each of these conditions, True."""
    found = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or ()}
    return all(found.get(kind) == "True" for kind in kinds)


def _message(obj: dict[str, Any]) -> str:
    """The first condition that is not True, or else the last condition's message."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    failing = [c for c in conditions if c["status"] != "True"]
    chosen = failing[0] if failing else (conditions[-1] if conditions else {})
    return str(
        chosen.get("message")
        or ("no status yet: is the operator running?" if not conditions else "")
    )


def _policy_row(policy: dict[str, Any]) -> dict[str, Any]:
    status = policy.get("status") or {}
    sidecars = status.get("sidecars") or {}
    return {
        "namespace": policy["metadata"]["namespace"],
        "name": policy["metadata"]["name"],
        # Valid: accepted, every reference resolved, and a table programmed from it.
        "valid": _true(policy, "Accepted", "ResolvedRefs", "Programmed"),
        "accepted": _true(policy, "Accepted"),
        "routeTableVersion": status.get("routeTableVersion"),
        "desired": sidecars.get("desired", 0),
        "synced": sidecars.get("synced", 0),
        "rejected": sidecars.get("rejected", 0),
        "message": _message(policy),
    }


def _backend_row(backend: dict[str, Any]) -> dict[str, Any]:
    status = backend.get("status") or {}
    return {
        "namespace": backend["metadata"]["namespace"],
        "name": backend["metadata"]["name"],
        "provider": backend["spec"].get("provider"),
        "valid": _true(backend, "Accepted", "ResolvedRefs", "Ready"),
        "accepted": _true(backend, "Accepted"),
        "readyEndpoints": status.get("readyEndpoints", 0),
        "message": _message(backend),
    }


def _print_status(report: dict[str, Any], output: str, out: TextIO) -> None:
    if output != "table":
        render.document(report, output, out)
        return
    render.table(
        "ROUTING POLICIES",
        ("NAMESPACE", "NAME", "VALID", "VERSION", "SYNCED", "REJECTED", "MESSAGE"),
        [
            (
                p["namespace"],
                p["name"],
                p["valid"],
                p["routeTableVersion"],
                f"{p['synced']}/{p['desired']}",
                p["rejected"],
                p["message"],
            )
            for p in report["policies"]
        ],
        out,
    )
    render.table(
        "MODEL BACKENDS",
        ("NAMESPACE", "NAME", "PROVIDER", "VALID", "READY ENDPOINTS", "MESSAGE"),
        [
            (
                b["namespace"],
                b["name"],
                b["provider"],
                b["valid"],
                b["readyEndpoints"],
                b["message"],
            )
            for b in report["backends"]
        ],
        out,
    )
    _print_not_injected(report["notInjected"], report["notInjectedUnchecked"], out)
    if report["sidecars"]:
        render.table(
            "SIDECARS",
            (
                "SIDECAR",
                "POLICY",
                "VERSION",
                "STATE",
                "OPEN BREAKERS",
                "EJECTED",
                "FAILING CHECKS",
                "ERROR",
            ),
            [
                (
                    s["sidecar"],
                    s["policy"],
                    s["routeTableVersion"],
                    s["state"],
                    s["openBreakers"],
                    s["ejectedEndpoints"],
                    s["failingHealthChecks"],
                    s["lastError"],
                )
                for s in report["sidecars"]
            ],
            out,
        )


def _print_not_injected(pods: list[dict[str, str]], unchecked: str | None, out: TextIO) -> None:
    if unchecked is not None:
        out.write(f"NOT INJECTED\n  not checked: {unchecked}\n\n")
        return
    if not pods:
        return
    render.table(
        "NOT INJECTED (they opt in but run without a sidecar: the webhook could not answer "
        "when they were created; recreate them, e.g. `kubectl rollout restart`)",
        ("NAMESPACE", "POD", "CREATED", "WHY IT SHOULD HAVE ONE"),
        [(p["namespace"], p["name"], p["created"], p["why"]) for p in pods],
        out,
    )


def _explain(args: argparse.Namespace, out: TextIO) -> int:
    request = ExplainRequest(  # bad arguments are refused before the cluster is asked
        model=args.model,
        prompt=args.prompt,
        body=_body(args.body_file) if args.body_file else None,
        api=args.api,
        headers=_headers(args.header),
    )
    cluster = Cluster(args.kubeconfig, args.context)
    namespace = args.namespace or cluster.default_namespace
    table = cluster.read(lambda api: route_table_json(api, namespace, args.policy))
    explanation = {"policy": args.policy, "namespace": namespace, **explain(table, request)}
    if args.output != "table":
        render.document(explanation, args.output, out)
        return OK
    signals = explanation["signals"]
    out.write(f"policy {namespace}/{args.policy}, route table {explanation['routeTableVersion']}\n")
    out.write("signals: " + ", ".join(f"{k}={v}" for k, v in signals.items()) + "\n")
    for category in explanation["categories"]:
        mark = "matched" if category["matched"] else "below threshold"
        out.write(
            f"category {category['category']}: similarity {category['similarity']} "
            f"against {category['threshold']} ({mark})\n"
        )
    out.write(f"route: {explanation['route']} ({explanation['strategy']})\n")
    out.write("candidates: " + ", ".join(explanation["candidates"]) + "\n")
    for name, labels in explanation["removed"].items():
        out.write(f"removed by {name}: {', '.join(labels)}\n")
    for label, score in explanation["scores"].items():
        out.write(f"score {label}: {score}\n")
    decision = explanation["decision"]
    out.write(f"decision: {decision['target']}")
    out.write(f", then {', '.join(decision['fallbacks'])}\n" if decision["fallbacks"] else "\n")
    return OK


def _body(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"--body-file {path}: {exc}", USAGE) from exc
    if not isinstance(body, dict):
        raise CliError(f"--body-file {path}: a request body is a JSON object", USAGE)
    return body


def _headers(values: Sequence[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, colon, rest = value.partition(":")
        if not colon or not name.strip():
            raise CliError(f"-H {value!r}: give a header as 'Name: value'", USAGE)
        headers[name.strip()] = rest.strip()
    return headers


def _cost(args: argparse.Namespace, out: TextIO) -> int:
    if args.window < 0:
        raise CliError("--window cannot be negative", USAGE)
    report = cost_window(args.sidecar, args.window)
    if args.output != "table":
        render.document(report, args.output, out)
        return OK
    window = f"the last {args.window:g} s" if args.window else "since each sidecar started"
    render.table(
        f"COST ({window}; total ${report['totalUsd']:.6f})",
        ("ROUTE", "BACKEND", "TIER", "USD"),
        [
            (c["route"], c["backend"], c["tier"] or "-", f"{c['usd']:.6f}")
            for c in report["costUsd"]
        ],
        out,
    )
    render.table(
        "TOKENS",
        ("BACKEND", "KIND", "TOKENS"),
        [(t["backend"], t["kind"], t["tokens"]) for t in report["tokens"]],
        out,
    )
    return OK


if __name__ == "__main__":
    sys.exit(main())
