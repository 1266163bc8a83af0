"""How the CLI prints: aligned tables for people, JSON or YAML for scripts.

Called by `cli.main` with rows (lists of dicts) or a document; it writes to the stream given and
decides nothing about the data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

FORMATS = ("table", "json", "yaml")


def document(data: Any, output: str, stream: TextIO) -> None:
    """The whole result as JSON or YAML."""
    if output == "json":
        stream.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    else:
        stream.write(yaml.safe_dump(data, sort_keys=False))


def table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], stream: TextIO
) -> None:
    """A titled table with aligned columns; `(none)` when there are no rows."""
    stream.write(f"{title}\n")
    if not rows:
        stream.write("  (none)\n\n")
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        stream.write(
            "  " + "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n"
        )
    stream.write("\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)
