"""Entry point of the sidecar image: `routemesh-sidecar` or `python -m routemesh_sidecar`.

The only place that reads the environment (through `SidecarSettings`, and the variables that
standalone route tables may name for API keys). It configures what is process-wide: logging,
the event loop, and the garbage collector's thresholds (`tune_collector`, `settle_heap`).

Standalone mode needs no cluster: `routemesh-sidecar --route-table FILE`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Callable
from pathlib import Path

from routemesh_sidecar import __version__
from routemesh_sidecar.app import Sidecar
from routemesh_sidecar.settings import SidecarSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; flags override the environment's settings."""
    parser = argparse.ArgumentParser(prog="routemesh-sidecar", description=__doc__)
    parser.add_argument("--route-table", type=Path, help="route table file to load and watch")
    parser.add_argument("--port", type=int, help="downstream listener port")
    parser.add_argument("--admin-port", type=int, help="admin listener port")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Read settings, configure logging and run the sidecar until interrupted."""
    args = parse_args(argv)
    overrides = {
        key: value
        for key, value in {
            "route_table_path": args.route_table,
            "listen_port": args.port,
            "admin_port": args.admin_port,
            "log_level": args.log_level,
        }.items()
        if value is not None
    }
    settings = SidecarSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # API keys a standalone route table names by variable are looked up here, at start, never
    # at import time.
    variables = dict(os.environ)  # noqa: TID251
    threshold = settings.gc_young_threshold
    if threshold:
        tune_collector(threshold)
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner,
    ):
        sidecar = Sidecar(settings, variables=variables)
        runner.run(sidecar.run_forever(settle_heap if threshold else None))


def tune_collector(young_threshold: int) -> None:
    """Collect the youngest generation every `young_threshold` allocations, not every 700.

    Process-wide, so it is done here and not by `Sidecar`, which tests build many of in one
    process. The older generations keep Python's own ratios to the youngest.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def settle_heap() -> None:
    """Freeze whatever is alive once the sidecar has started, just before its listener binds.

    That is the modules, the settings and, when it has arrived by then, the first route table.
    No collection scans those objects again: without this, every full collection walked them
    all (24 ms each, measured under load). It costs one full collection, once, before any
    request can arrive (24 ms for 63,000 objects with the benchmark's table). What loads later
    (route tables, the models and vocabularies they name) is not frozen and is collected as
    usual. The trade: an object frozen here that later becomes part of an unreachable reference
    cycle is never freed (one that loses its last reference is freed as always), bounded by what
    start-up made.
    """
    gc.collect()
    gc.freeze()


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `asyncio.run` creates: uvloop's when chosen (or `auto` and installed)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415  (optional: the sidecar runs without it)
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("event_loop is uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
