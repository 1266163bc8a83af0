"""A real local Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager.

The pytest plugin, the demo and `python -m routemesh_testing up` start it. The binaries come from
`hack/build-controlplane.sh` (built from the published Go modules, cached outside the work tree);
this module only locates and runs them, with envtest-like flags: client-certificate admin, RBAC,
service-account signing, and etcd on tmpfs without fsync. There is no kubelet, so Pods are stored
but never run.

It must never fall back to a fake API server: when a binary is missing it raises
`BinariesMissing` with the command that builds them.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from routemesh_testing.kubectl import Kubectl
from routemesh_testing.pki import CertificateAuthority, generate_service_account_signer
from routemesh_testing.waiting import http_ok

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-controlplane.sh"
VERSIONS_SCRIPT = REPO_ROOT / "hack" / "versions.sh"

# Only these run: enough for garbage collection, namespace deletion and ServiceAccount tokens.
# Everything that needs a kubelet or a cloud (nodes, pods' lifecycle, volumes) stays off.
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
)


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start or to become ready."""


class BinariesMissing(ControlPlaneError):
    """The binaries have not been built on this machine."""


class ControlPlaneSettings(BaseSettings):
    """Where the harness finds its binaries and how long it waits. Read from the environment."""

    model_config = SettingsConfigDict(env_prefix="ROUTEMESH_CONTROLPLANE_", populate_by_name=True)

    bin_dir: Path | None = Field(
        default=None,
        # KUBEBUILDER_ASSETS too, so that developers who have envtest's binaries can reuse them.
        validation_alias=AliasChoices("ROUTEMESH_CONTROLPLANE_BIN_DIR", "KUBEBUILDER_ASSETS"),
        description="Directory holding kube-apiserver, kube-controller-manager and etcd. "
        "Defaults to the cache directory that hack/build-controlplane.sh writes.",
    )
    kubectl: str = Field(
        default="kubectl",
        description="The kubectl to drive the control plane with; falls back to bin_dir's.",
    )
    startup_timeout: float = Field(
        default=90.0, gt=0, description="Seconds to wait for each process to become ready."
    )
    etcd_data_root: Path = Field(
        default=Path("/dev/shm"),  # noqa: S108  (a directory of our own is made inside it)
        description="Parent of etcd's data directory; tmpfs keeps the tests off the disk.",
    )


@dataclass(frozen=True)
class Binaries:
    """Paths of the control-plane executables."""

    kube_apiserver: Path
    kube_controller_manager: Path
    etcd: Path
    kubectl: Path

    @classmethod
    def locate(cls, settings: ControlPlaneSettings) -> Binaries:
        """Find the binaries, or raise `BinariesMissing` saying how to build them."""
        bin_dir = settings.bin_dir or _default_bin_dir()
        found = {
            name: bin_dir / name for name in ("kube-apiserver", "kube-controller-manager", "etcd")
        }
        missing = [str(p) for p in found.values() if not os.access(p, os.X_OK)]
        if missing:
            raise BinariesMissing(
                "the local control plane is not built: missing "
                + ", ".join(missing)
                + f". Build it with `bash {BUILD_SCRIPT.relative_to(REPO_ROOT)}` "
                "(or `make controlplane`); it takes about 5 minutes cold on 2 cores."
            )
        kubectl = shutil.which(settings.kubectl) or shutil.which(str(bin_dir / "kubectl"))
        if kubectl is None:
            raise BinariesMissing(f"kubectl not found (tried {settings.kubectl!r} and {bin_dir})")
        return cls(
            kube_apiserver=found["kube-apiserver"],
            kube_controller_manager=found["kube-controller-manager"],
            etcd=found["etcd"],
            kubectl=Path(kubectl),
        )


def _versions_script(expression: str) -> str:
    script = f"source {VERSIONS_SCRIPT}; {expression}"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def _default_bin_dir() -> Path:
    try:
        return Path(_versions_script("routemesh_controlplane_dir"))
    except subprocess.CalledProcessError as exc:
        # The cache key includes the Go version, so without Go there is no default directory.
        raise BinariesMissing(
            f"cannot compute the control-plane cache directory ({exc.stderr.strip()}); "
            "install Go, or set ROUTEMESH_CONTROLPLANE_BIN_DIR"
        ) from exc


def pinned_versions() -> dict[str, str]:
    """The Kubernetes and etcd versions pinned in hack/versions.sh, the one place they are set."""
    k8s, etcd = _versions_script("echo $K8S_VERSION $ETCD_VERSION").split()
    return {"k8s": k8s, "etcd": etcd}


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """A child's `preexec_fn`: the kernel kills the child when its parent dies.

    It runs in the child between fork and exec, so that a killed pytest leaves no process of
    its own behind (the control plane, an operator, Phoenix).
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


@dataclass
class _Ports:
    etcd_client: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    controller_manager: int = field(default_factory=free_port)


class LocalControlPlane:
    """One etcd, one kube-apiserver and one kube-controller-manager on 127.0.0.1.

    `start()` returns once the API server is ready, the `default` namespace exists, the given CRDs
    are Established and the controller manager is healthy. `stop()` kills all three and removes
    etcd's data. With `detached=True` the processes outlive this Python process (for the CLI);
    otherwise they die with it.
    """

    def __init__(
        self,
        binaries: Binaries,
        workdir: Path,
        settings: ControlPlaneSettings | None = None,
        *,
        detached: bool = False,
    ) -> None:
        self.binaries = binaries
        self.workdir = workdir
        self.settings = settings or ControlPlaneSettings()
        self.detached = detached
        self.pki_dir = workdir / "pki"
        self.log_dir = workdir / "logs"
        self.kubeconfig = workdir / "kubeconfig"
        self.ports = _Ports()
        self._processes: list[_Process] = []
        self._etcd_data: Path | None = None
        self._apiserver: _Process | None = None

    @property
    def server(self) -> str:
        """The API server's URL."""
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def pids(self) -> dict[str, int]:
        """Process ids by component, for the CLI's state file."""
        return {p.name: p.popen.pid for p in self._processes}

    def state(self) -> dict[str, object]:
        """What the CLI records for a detached control plane, so that `down` can stop it."""
        return {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "pids": self.pids,
            "etcd_data": str(self._etcd_data) if self._etcd_data else None,
        }

    def kubectl(self) -> Kubectl:
        """A kubectl bound to this control plane's kubeconfig."""
        return Kubectl(self.binaries.kubectl, self.kubeconfig)

    def start(self, crds: Sequence[Path] = ()) -> None:
        """Start everything; on any failure stop what started and raise `ControlPlaneError`."""
        started = time.monotonic()
        for d in (self.pki_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        try:
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._wait_for_default_namespace()
            # CRDs go in before the controller manager so that its garbage collector discovers
            # them at start, instead of at its next 30-second discovery resync.
            self._install_crds(crds)
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        log.info("control plane ready at %s in %.1f s", self.server, time.monotonic() - started)

    @contextlib.contextmanager
    def apiserver_outage(self) -> Iterator[None]:
        """Freeze kube-apiserver (SIGSTOP) for the block, then let it go on (SIGCONT).

        Clients see what a real outage looks like: connections that open and never answer.
        """
        if self._apiserver is None:
            raise ControlPlaneError("the API server is not running")
        pid = self._apiserver.popen.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    @contextlib.contextmanager
    def apiserver_restart(self) -> Iterator[None]:
        """Stop kube-apiserver (SIGTERM) for the block, then start it again on the same port.

        Unlike an outage, clients see connections refused and their watches end; the new process
        serves the same etcd, so nothing stored is lost. Back when its /readyz answers.
        """
        if self._apiserver is None:
            raise ControlPlaneError("the API server is not running")
        stopped = self._apiserver
        terminate(stopped.popen)
        self._processes.remove(stopped)
        self._apiserver = None
        try:
            yield
        finally:
            self._start_apiserver()

    def stop(self) -> None:
        """Stop the processes in reverse order and remove etcd's data directory."""
        for proc in reversed(self._processes):
            terminate(proc.popen)
        self._processes.clear()
        if self._etcd_data is not None:
            shutil.rmtree(self._etcd_data, ignore_errors=True)
            self._etcd_data = None

    # ------------------------------------------------------------------ steps

    def _write_pki(self) -> None:
        server_ca = CertificateAuthority("routemesh-local-server-ca")
        client_ca = CertificateAuthority("routemesh-local-client-ca")
        (self.pki_dir / "server-ca.crt").write_bytes(server_ca.cert_pem)
        (self.pki_dir / "client-ca.crt").write_bytes(client_ca.cert_pem)
        server_ca.issue_serving(
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=("127.0.0.1", "10.0.0.1"),
        ).write(self.pki_dir, "apiserver")
        client_ca.issue_client("admin", groups=("system:masters",)).write(self.pki_dir, "admin")
        # The front-proxy pair completes the aggregation layer's configuration; without it the
        # controller manager logs an error for the missing request-header CA every few seconds.
        front_proxy_ca = CertificateAuthority("routemesh-local-front-proxy-ca")
        (self.pki_dir / "front-proxy-ca.crt").write_bytes(front_proxy_ca.cert_pem)
        front_proxy_ca.issue_client("front-proxy-client").write(self.pki_dir, "front-proxy-client")
        generate_service_account_signer().write(self.pki_dir, "sa-signer")

    def _start_etcd(self) -> None:
        root = self.settings.etcd_data_root
        self._etcd_data = Path(
            tempfile.mkdtemp(prefix="routemesh-etcd-", dir=root if root.is_dir() else None)
        )
        client_url = f"http://127.0.0.1:{self.ports.etcd_client}"
        args = [
            f"--data-dir={self._etcd_data}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls=http://127.0.0.1:{self.ports.etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{self.ports.etcd_peer}",
            f"--initial-cluster=default=http://127.0.0.1:{self.ports.etcd_peer}",
            "--listen-metrics-urls=",
            "--log-level=warn",
        ]
        if _has_flag(self.binaries.etcd, "--unsafe-no-fsync"):
            args.append("--unsafe-no-fsync=true")
        proc = self._spawn("etcd", self.binaries.etcd, args)
        self._wait(proc, lambda: http_ok(f"{client_url}/health"))

    def _start_apiserver(self) -> None:
        pki = self.pki_dir
        args = [
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports.apiserver}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'client-ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={pki / 'sa-signer.crt'}",
            f"--service-account-signing-key-file={pki / 'sa-signer.key'}",
            # The "kubernetes" Endpoints would carry a loopback IP, which validation refuses.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--v=1",
        ]
        self._apiserver = self._spawn("kube-apiserver", self.binaries.kube_apiserver, args)
        context = self._admin_ssl_context()
        self._wait(self._apiserver, lambda: http_ok(f"{self.server}/readyz", context=context))

    def _write_kubeconfig(self) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "routemesh-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": b64(self.pki_dir / "server-ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(self.pki_dir / "admin.crt"),
                        "client-key-data": b64(self.pki_dir / "admin.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "routemesh-local",
                    "context": {"cluster": "routemesh-local", "user": "admin"},
                }
            ],
            "current-context": "routemesh-local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _wait_for_default_namespace(self) -> None:
        kubectl = self.kubectl()
        if self._apiserver is None:
            raise ControlPlaneError("the API server has not been started")
        self._wait(
            self._apiserver,
            lambda: kubectl.run("get", "namespace", "default", check=False).returncode == 0,
        )

    def _install_crds(self, crds: Sequence[Path]) -> None:
        if not crds:
            return
        kubectl = self.kubectl()
        names: list[str] = []
        for path in crds:
            kubectl.run("apply", "--server-side", "-f", str(path))
            names += [f"crd/{doc['metadata']['name']}" for doc in _yaml_documents(path)]
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s", *names)

    def _start_controller_manager(self) -> None:
        pki = self.pki_dir
        args = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--service-account-private-key-file={pki / 'sa-signer.key'}",
            f"--root-ca-file={pki / 'server-ca.crt'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.controller_manager}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            "--kube-api-qps=100",
            "--kube-api-burst=200",
            "--v=1",
        ]
        proc = self._spawn("kube-controller-manager", self.binaries.kube_controller_manager, args)
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        # kcm serves /healthz with a self-signed certificate of its own; only liveness is read.
        insecure.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{self.ports.controller_manager}/healthz"
        self._wait(proc, lambda: http_ok(url, context=insecure))

    # ------------------------------------------------------------------ helpers

    def _admin_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki_dir / "server-ca.crt"))
        context.load_cert_chain(self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        return context

    def _spawn(self, name: str, binary: Path, args: list[str]) -> _Process:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                [str(binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=self.detached,
                preexec_fn=None if self.detached else die_with_parent,  # noqa: PLW1509
            )
        proc = _Process(name, popen, log_path)
        self._processes.append(proc)
        log.debug("started %s (pid %d), log %s", name, popen.pid, log_path)
        return proc

    def _wait(self, proc: _Process, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with code {proc.popen.returncode}; "
                    f"last lines of {proc.log_path}:\n{proc.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{proc.name} not ready after {self.settings.startup_timeout:.0f} s; "
            f"last lines of {proc.log_path}:\n{proc.log_tail()}"
        )


def terminate(popen: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL if it has not ended within `grace`."""
    if popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(grace)


def _has_flag(binary: Path, flag: str) -> bool:
    result = subprocess.run([str(binary), "--help"], capture_output=True, text=True, check=False)
    return flag in result.stdout + result.stderr


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
