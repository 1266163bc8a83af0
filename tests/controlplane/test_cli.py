"""Starting and stopping the control plane by hand: `python -m routemesh_testing up|status|down`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from routemesh_testing.controlplane import REPO_ROOT, Binaries, ControlPlaneSettings
from routemesh_testing.kubectl import Kubectl

TEST_CRD = REPO_ROOT / "tests/fixtures/crds/widgets.testing.routemesh.dev.yaml"


def cli(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "testing")}
    return subprocess.run(
        [sys.executable, "-m", "routemesh_testing", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.controlplane
def test_up_outlives_the_cli_and_down_stops_it(tmp_path: Path):
    state_dir = tmp_path / "cluster"
    up = cli("up", "--crd", str(TEST_CRD), state_dir=state_dir)
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={state_dir / 'kubeconfig'}" in up.stdout

        # The CLI has exited; the detached processes still serve.
        kubectl = Kubectl(Binaries.locate(ControlPlaneSettings()).kubectl, state_dir / "kubeconfig")
        assert kubectl.run("get", "--raw", "/readyz").stdout.strip() == "ok"
        assert kubectl.get("crd", "widgets.testing.routemesh.dev")["spec"]["group"]
        assert cli("status", state_dir=state_dir).returncode == 0
        pids = json.loads((state_dir / "state.json").read_text())["pids"]
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    finally:
        down = cli("down", state_dir=state_dir)

    assert down.returncode == 0, down.stderr
    assert not any(process_exists(pid) for pid in pids.values())
    assert cli("status", state_dir=state_dir).stdout.strip() == "not running"
