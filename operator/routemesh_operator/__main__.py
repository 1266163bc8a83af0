"""`routemesh-operator`: run the operator (kopf, with the handlers' own registry).

Reads `OperatorSettings` from the environment once, here, and hands them down. With
`ROUTEMESH_OPERATOR_STANDALONE=false` (the chart's default for more than one replica) replicas
coordinate through kopf peering, so only one of them handles events at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from routemesh_operator import __version__
from routemesh_operator.settings import OperatorSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: only --help and --version; the settings come from the environment."""
    parser = argparse.ArgumentParser(
        prog="routemesh-operator",
        description="Run the RouteMesh operator against the current kubeconfig (or the "
        "in-cluster ServiceAccount): it compiles RoutingPolicies and ModelBackends into route "
        "tables, serves them to the sidecars, and injects the sidecar into pods.",
        epilog="Settings are read from ROUTEMESH_OPERATOR_* variables; see docs/architecture.md "
        "and the chart's values.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run until interrupted (or answer --help or --version and exit)."""
    parse_args(argv)
    from routemesh_operator.handlers import run_operator  # noqa: PLC0415  (kopf only to run)

    settings = OperatorSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(run_operator(settings))


if __name__ == "__main__":
    main()
