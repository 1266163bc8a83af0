"""The project's layout: two import packages under source roots, nothing shadowing the stdlib."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_both_packages_import_from_their_source_roots():
    import routemesh_operator
    import routemesh_sidecar

    assert Path(routemesh_operator.__file__).parent == REPO / "operator" / "routemesh_operator"
    assert Path(routemesh_sidecar.__file__).parent == REPO / "sidecar" / "routemesh_sidecar"


@pytest.mark.parametrize("root", ["operator", "sidecar", "testing"])
def test_source_roots_are_not_packages(root: str):
    assert not (REPO / root / "__init__.py").exists()


def test_stdlib_operator_is_not_shadowed():
    # Run from the repository root, where a directory named `operator` sits on the path.
    code = "import operator, routemesh_operator; print(operator.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(out).parent == Path(sysconfig.get_paths()["stdlib"])


def test_sidecar_loads_without_kopf_or_kubernetes():
    code = (
        "import sys, routemesh_sidecar.__main__, routemesh_sidecar.app\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'kopf', 'kubernetes', 'kubernetes_asyncio', 'routemesh_operator'})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


@pytest.mark.timeout(300)
def test_wheel_ships_both_packages_and_no_test_support(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=REPO,
        check=True,
    )
    [wheel] = tmp_path.glob("routemesh-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {"routemesh_operator", "routemesh_sidecar"} <= tops
    assert not tops & {"routemesh_testing", "operator", "sidecar", "tests"}
