"""Each image's Python tree, built without a daemon, starts its entry point from that tree alone.

There is no container engine here, so the tests build what the Dockerfiles' build stage builds
(`hack/build-rootfs.sh`: the image's hash-locked dependencies and the project, installed with
`pip install --target`) and start the console script the chart runs with Python's site
directories off (`-S`) and `PYTHONPATH` set to that tree and nothing else. At exit, the process
writes down the file of every module it imported: each must come from the tree or from Python's
own standard library.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from routemesh_operator import __version__ as operator_version
from routemesh_testing import tables
from routemesh_testing.controlplane import REPO_ROOT, free_port, terminate
from routemesh_testing.waiting import http_ok, poll_until

pytestmark = pytest.mark.timeout(300)

# Runs a console script as its image would, and records where every imported module came from.
RECORDER = """
import atexit, json, runpy, sys
record_to = sys.argv.pop(1)
def record():
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    with open(record_to, "w") as out:
        json.dump(sorted(f for f in files if f), out)
atexit.register(record)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def build(extras: str, out: Path) -> Path:
    subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-rootfs.sh"), extras, str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        capture_output=True,
        timeout=240,
    )
    return out


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rootfs")
    return {extras: build(extras, root / extras) for extras in ("sidecar", "operator")}


def isolated(script: Path, *args: str, record: Path) -> list[str]:
    """The argv that runs `script` with the tree alone, recording its modules' files."""
    return [sys.executable, "-S", "-c", RECORDER, str(record), str(script), *args]


def environment(tree: Path, home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree / "lib"), "HOME": str(home), **extra}


def outside(tree: Path, files: list[str], probe: Path | None = None) -> list[str]:
    """Imported files from neither the tree nor the standard library (nor the probe run)."""
    stdlib = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    allowed = (str(tree), *stdlib)
    return [
        f for f in files if f != str(probe) and (not f.startswith(allowed) or "site-packages" in f)
    ]


def test_the_sidecar_tree_answers_readyz_and_imports_nothing_from_outside(
    trees: dict[str, Path], tmp_path: Path
):
    tree = trees["sidecar"]
    assert not (tree / "lib" / "kopf").exists()
    assert not (tree / "lib" / "kubernetes").exists()
    assert not (tree / "lib" / "routemesh_operator").exists()
    record = tmp_path / "modules.json"
    port, admin = free_port(), free_port()
    argv = isolated(
        tree / "bin" / "routemesh-sidecar",
        "--route-table",
        str(REPO_ROOT / "examples" / "sidecar" / "route-table.json"),
        "--port",
        str(port),
        "--admin-port",
        str(admin),
        record=record,
    )
    env = environment(tree, tmp_path, OPENAI_API_KEY="sk-test", ANTHROPIC_API_KEY="sk-ant-test")
    files = run_until_ready(argv, env, admin, tmp_path, record, timeout=60)
    assert any(f.startswith(str(tree / "lib" / "routemesh_sidecar")) for f in files)
    assert any(f.startswith(str(tree / "lib" / "uvloop")) for f in files), "on uvloop"
    assert outside(tree, files) == []


def test_the_operator_tree_prints_its_version_and_imports_nothing_from_outside(
    trees: dict[str, Path], tmp_path: Path
):
    tree = trees["operator"]
    record = tmp_path / "modules.json"
    done = subprocess.run(
        isolated(tree / "bin" / "routemesh-operator", "--version", record=record),
        env=environment(tree, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"routemesh-operator {operator_version}"
    assert outside(tree, json.loads(record.read_text())) == []
    # --version answers before kopf loads: what the real start imports must come from the tree too.
    probe = tmp_path / "probe.py"
    probe.write_text("import routemesh_operator.handlers, routemesh_operator.cli.main\n")
    done = subprocess.run(
        isolated(probe, record=record),
        env=environment(tree, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    files = json.loads(record.read_text())
    assert any(f.startswith(str(tree / "lib" / "kopf")) for f in files)
    assert any(f.startswith(str(tree / "lib" / "kubernetes")) for f in files)
    assert outside(tree, files, probe) == []


def test_a_lock_that_is_missing_is_refused(tmp_path: Path):
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-rootfs.sh"), "nonsense", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "no lock for extras 'nonsense'" in done.stderr


def categories_table(tier: str) -> str:
    """A route table whose one category is matched by `tier` (the default route otherwise)."""
    category = {"name": "code", "examples": ["Write a Python function"], "threshold": 0.4}
    built = tables.table(
        {"b": tables.backend("http://127.0.0.1:9/v1")},
        tables.route("code", ("b", "m"), match={"signals": {"categories": [category]}}),
        tables.route("default", ("b", "m")),
        category_matching={"tier": tier, "method": "Centroid"},
    )
    return built.model_dump_json()


@pytest.mark.parametrize("tier", ["Static", "Transformer"])
def test_the_embeddings_tree_runs_both_model_tiers_from_the_tree_alone(
    embeddings_tree: Path, tmp_path: Path, tier: str
):
    tree = embeddings_tree
    model = tree / "models" / "static-minilm.npz"
    assert model.stat().st_size > 10_000_000, "the Static table was distilled in the build"
    quantized = tree / "models" / "minilm-int8-compute.onnx"
    assert quantized.stat().st_size > 10_000_000, "MiniLM was quantized in the build"
    assert not (tree / "lib" / "onnx").exists(), "the quantizer is the build's, not the image's"
    table = tmp_path / "table.json"
    table.write_text(categories_table(tier))
    record = tmp_path / "modules.json"
    port, admin = free_port(), free_port()
    argv = isolated(
        tree / "bin" / "routemesh-sidecar",
        *("--route-table", str(table), "--port", str(port), "--admin-port", str(admin)),
        record=record,
    )
    env = environment(
        tree,
        tmp_path,
        ROUTEMESH_SIDECAR_STATIC_MODEL=str(model),
        ROUTEMESH_SIDECAR_TRANSFORMER_MODEL=str(quantized),
    )
    # Ready means the table was admitted: its tier's model loaded and embedded the examples.
    files = run_until_ready(argv, env, admin, tmp_path, record, timeout=90)
    loaded = "onnxruntime" if tier == "Transformer" else "tokenizers"
    assert any(f.startswith(str(tree / "lib" / loaded)) for f in files)
    assert outside(tree, files) == []


@pytest.fixture(scope="module")
def embeddings_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("sidecar,embeddings", tmp_path_factory.mktemp("rootfs") / "sidecar-embeddings")


def run_until_ready(
    argv: list[str], env: dict[str, str], admin: int, tmp_path: Path, record: Path, timeout: float
) -> list[str]:
    """Start a sidecar from a tree, await readiness, SIGTERM it; the files it imported."""
    with (tmp_path / "sidecar.log").open("wb") as log:
        child = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = poll_until(
            lambda: http_ok(f"http://127.0.0.1:{admin}/readyz", 1.0), bool, timeout=timeout
        )
        assert ready, (tmp_path / "sidecar.log").read_text()[-2000:]
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 0
    finally:
        terminate(child)
    files: list[str] = json.loads(record.read_text())
    return files
