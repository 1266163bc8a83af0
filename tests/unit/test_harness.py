"""The control-plane harness fails loudly, never skips, when its binaries are missing."""

from pathlib import Path

import pytest

from routemesh_testing.controlplane import Binaries, BinariesMissing, ControlPlaneSettings


def test_locate_names_the_missing_binaries_and_the_build_command(tmp_path: Path):
    with pytest.raises(BinariesMissing) as missing:
        Binaries.locate(ControlPlaneSettings(bin_dir=tmp_path))
    message = str(missing.value)
    assert str(tmp_path / "kube-apiserver") in message
    assert "hack/build-controlplane.sh" in message


def test_bin_dir_can_come_from_envtests_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ROUTEMESH_CONTROLPLANE_BIN_DIR", raising=False)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    assert ControlPlaneSettings().bin_dir == tmp_path


def test_tests_that_need_the_control_plane_fail_without_it(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ROUTEMESH_CONTROLPLANE_BIN_DIR", str(tmp_path))
    pytester.makepyfile(
        """
        def test_needs_cluster(kubectl):
            assert kubectl
        def test_unit():
            assert True
        """
    )
    result = pytester.runpytest_subprocess("-p", "routemesh_testing.pytest_plugin")
    result.assert_outcomes(passed=1, errors=1, skipped=0)
    result.stdout.fnmatch_lines(["*the local control plane is not built*"])
