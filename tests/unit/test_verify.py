"""`make verify`: the pinned control-plane versions agree across files, and drift is caught."""

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_verify() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verify", REPO / "hack" / "verify.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repository_passes_verify():
    assert load_verify().main([]) == 0


def test_a_staging_module_at_the_wrong_version_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    verify = load_verify()
    shutil.copytree(REPO / "hack", tmp_path / "hack", ignore=shutil.ignore_patterns("go.sum"))
    gomod = tmp_path / "hack/controlplane/go.mod"
    gomod.write_text(
        gomod.read_text().replace("k8s.io/kubelet v0.33.13", "k8s.io/kubelet v0.33.12")
    )
    monkeypatch.setattr(verify, "REPO", tmp_path)
    assert verify.check_controlplane_pins(False) == [
        "hack/controlplane/go.mod: k8s.io/kubelet must be replaced at v0.33.13"
    ]
