"""Run every benchmark in bench/ and print Markdown rows for docs/benchmarks.md.

`make bench` calls it. Each benchmark is a module here with a `run() -> list[str]` that returns
table rows; this runner adds the date and the machine so every recorded number says where it came
from. Benchmarks measure; they never assert (timed assertions belong to nobody's CI).
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import sys
from pathlib import Path

BENCHMARKS = [
    "controlplane_startup",
    "sidecar_overhead",
    "routing_decision",
    "failover",
    "token_estimate",
    "operator_distribution",
    "sustained_load",
]


def machine() -> str:
    """Describe the machine: cores, memory, CPU model, Python."""
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem_gib:.0f} GiB, {cpu}, Python {platform.python_version()}"


def main() -> int:
    """Run the benchmarks named on the command line, or all of them."""
    sys.path.insert(0, str(Path(__file__).parent))
    names = sys.argv[1:] or BENCHMARKS
    print(f"date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {machine()}")
    for name in names:
        module = importlib.import_module(name)
        print(f"\n## {name}\n")
        for row in module.run():
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
