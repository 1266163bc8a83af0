"""Start and stop the local control plane by hand: `python -m routemesh_testing up|down|status`.

For the demo and for people debugging. `up` starts the processes detached, writes a kubeconfig
and a state file under the state directory (default `.localcluster/` in the repository), and
prints the `export KUBECONFIG=...` line to use. `down` stops them. It never builds the binaries:
`make controlplane` does that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from routemesh_testing.controlplane import (
    REPO_ROOT,
    Binaries,
    ControlPlaneError,
    ControlPlaneSettings,
    LocalControlPlane,
)

STATE_FILE = "state.json"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m routemesh_testing", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=REPO_ROOT / ".localcluster",
        help="where the kubeconfig, certificates, logs and state file go",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver and kube-controller-manager")
    up.add_argument("--crd", type=Path, action="append", default=[], help="CRD file to install")
    sub.add_parser("down", help="stop a control plane started with `up`")
    sub.add_parser("status", help="say whether it runs, and where")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    state_dir: Path = args.state_dir
    if args.command == "up":
        return _up(state_dir, args.crd)
    if args.command == "down":
        return _down(state_dir)
    return _status(state_dir)


def _up(state_dir: Path, crds: list[Path]) -> int:
    previous = _read_state(state_dir)
    if previous is not None and _alive(previous):
        print(f"already running; export KUBECONFIG={state_dir / 'kubeconfig'}")
        return 0
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    settings = ControlPlaneSettings()
    try:
        plane = LocalControlPlane(Binaries.locate(settings), state_dir, settings, detached=True)
        default_crds = sorted((REPO_ROOT / "crds").glob("*.yaml"))
        plane.start(crds=crds or default_crds)
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    (state_dir / STATE_FILE).write_text(json.dumps(plane.state(), indent=2))
    print(f"control plane ready at {plane.server}")
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


def _down(state_dir: Path) -> int:
    state = _read_state(state_dir)
    if state is None:
        print("not running")
        return 0
    pids: dict[str, int] = state["pids"]
    for pid in reversed(list(pids.values())):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _alive(state) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    if state.get("etcd_data"):
        shutil.rmtree(state["etcd_data"], ignore_errors=True)
    (state_dir / STATE_FILE).unlink()
    print("stopped")
    return 0


def _status(state_dir: Path) -> int:
    state = _read_state(state_dir)
    if state is None or not _alive(state):
        print("not running")
        return 1
    print(f"running at {state['server']}; export KUBECONFIG={state['kubeconfig']}")
    return 0


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def _alive(state: dict[str, Any]) -> bool:
    pids = state.get("pids")
    if not isinstance(pids, dict):
        return False
    for pid in pids.values():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return True
    return False


if __name__ == "__main__":
    sys.exit(main())
