"""The operator at scale (issue 6): route-table propagation to 200 sidecars, and memory.

`bench/run.py` (`make bench`) calls `run()`; it also runs alone:
`PYTHONPATH=testing .venv/bin/python bench/operator_distribution.py`. It starts its own local
control plane (`LocalControlPlane`, from the cached binaries) and the real operator as a separate
process (`python -m routemesh_operator`, standalone), as it runs in a cluster, and measures:

1. Propagation. 200 simulated sidecars in this process (one event loop), each a real
   `WatchRouteTableSource` with its own `ActiveRouteTable` and pod name, sharing one
   ServiceAccount token of audience `routemesh`: each long-polls, parses a new table with the
   sidecar's own model, swaps it in and ACKs it in its next request. The clock starts just before
   the real `kubectl apply` of a changed RoutingPolicy and stops, per sidecar, when that sidecar
   has swapped in the table of the new generation. Reported: when all 200 have it (p50, p99, max
   over the changes), the per-sidecar distribution, and when the policy's status says
   `sidecars.synced == 200` for that version (read from a watch on the API server). Run on an
   otherwise empty cluster (with the shared token, then with a Pod and a pod-bound token per
   sidecar, as projected tokens are), then with the 1,000 policies of step 2 in place (in a
   namespace of its own, then in one of theirs).
2. Memory and the initial compile. The operator's RSS (`/proc/<pid>/status`) when idle, and after
   1,000 RoutingPolicies and 200 ModelBackends (with their Secrets, over 10 namespaces) are all
   `Programmed=True`; how long that took from the first `kubectl apply`; and the same after a
   restart with everything in place.

It measures; it never asserts. It must not leave anything behind: the operator and the control
plane are stopped in `finally` blocks (and die with this process if it is killed), and it talks
to no cluster but the one it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from routemesh_operator.kube import Credentials
from routemesh_sidecar.discovery.watch import WatchRouteTableSource, WatchTarget
from routemesh_sidecar.routetable import ActiveRouteTable, RouteTable
from routemesh_testing.controlplane import (
    REPO_ROOT,
    Binaries,
    ControlPlaneSettings,
    LocalControlPlane,
    free_port,
)

SIDECARS = 200
CHANGES = 50  # measured changes on the empty cluster
LOADED_CHANGES = 30  # measured changes with the 1,000 policies in place
WARMUP_CHANGES = 3  # not counted
NAMESPACES = 10
POLICIES_PER_NAMESPACE = 100
BACKENDS_PER_NAMESPACE = 20
GOAL_SECONDS = 1.0
AUDIENCE = "routemesh"
POLICIES_PATH = "/apis/routemesh.dev/v1alpha1/routingpolicies"
PROPAGATION_POLICY = "chat"
POD_LABELS = {"app": "chat", "pod-template-hash": "bench"}
SETTLE_PAUSE = 0.3  # after a change is synced, before the next one
CHANGE_TIMEOUT = 60.0
# The operator's log line for a compiled table it is about to write and publish.
PUBLISHING = re.compile(
    r"^(\S+ \S+) INFO routemesh_operator\.reconciler "
    r"publishing route table (\S+)/(\S+) version (\S+)$"
)


# ----------------------------------------------------------------------------- manifests


def secret(name: str) -> dict[str, Any]:
    """A provider key, so that the backends resolve."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"api-key": "bench"},
    }


def model_backend(name: str, secret_name: str) -> dict[str, Any]:
    """An external OpenAI backend serving two models (never called: nothing routes here)."""
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": name},
        "spec": {
            "provider": "OpenAI",
            "endpoint": {"url": "http://127.0.0.1:9/v1"},
            "credentials": {"secretRef": {"name": secret_name, "key": "api-key"}},
            "models": [
                {
                    "name": model,
                    "contextWindow": 32000,
                    "pricing": {"inputPerMillion": price, "outputPerMillion": price},
                    "qualityTier": "Standard",
                }
                for model, price in (("small", "1"), ("big", "5"))
            ],
        },
    }


def routing_policy(name: str, app: str, first: str, second: str, total: int) -> dict[str, Any]:
    """Two routes over two backends: `big` falls back, the rest is split 50/50."""
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "defaults": {
                "retry": {"attempts": 2},
                "timeouts": {"connect": "2s", "total": f"{total}s"},
            },
            "routes": [
                {
                    "name": "big",
                    "match": {"models": ["big"]},
                    "strategy": {"type": "Fallback"},
                    "targets": [
                        {"backend": first, "model": "big"},
                        {"backend": second, "model": "big"},
                    ],
                },
                {
                    "name": "default",
                    "strategy": {"type": "Weighted"},
                    "targets": [
                        {"backend": first, "model": "small", "weight": 50},
                        {"backend": second, "model": "small", "weight": 50},
                    ],
                },
            ],
        },
    }


def pod_name(index: int) -> str:
    """The pod a simulated sidecar says it runs in."""
    return f"chat-{index:03d}"


def in_namespace(namespace: str, docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML with every object placed in `namespace`."""
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return yaml.safe_dump_all(docs)


def memory_namespace(index: int) -> tuple[str, str]:
    """One of the memory step's namespaces: 20 Secrets and backends, 100 disjoint policies."""
    name = f"bench-mem-{index:02d}"
    docs: list[dict[str, Any]] = []
    for b in range(BACKENDS_PER_NAMESPACE):
        docs.append(secret(f"key-{b:02d}"))
        docs.append(model_backend(f"backend-{b:02d}", f"key-{b:02d}"))
    for p in range(POLICIES_PER_NAMESPACE):
        first = f"backend-{p % BACKENDS_PER_NAMESPACE:02d}"
        second = f"backend-{(p + 1) % BACKENDS_PER_NAMESPACE:02d}"
        docs.append(routing_policy(f"policy-{p:03d}", f"app-{p:03d}", first, second, 60))
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    return name, yaml.safe_dump(namespace) + "---\n" + in_namespace(name, docs)


# ----------------------------------------------------------------------------- processes


class AsyncKubectl:
    """The real kubectl, run without blocking the event loop the sidecars share."""

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = str(binary)
        self.kubeconfig = str(kubeconfig)

    async def run(self, *args: str, stdin: str | None = None, within: float = 600) -> str:
        """`kubectl ARGS`; its stdout, or RuntimeError with its stderr."""
        process = await asyncio.create_subprocess_exec(
            self.binary,
            f"--kubeconfig={self.kubeconfig}",
            *args,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin is not None else None), within
        )
        if process.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} exited {process.returncode}: {err!r}")
        return out.decode()


def _die_with_parent() -> None:
    # Between fork and exec: if the benchmark is killed, its operator dies too.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class OperatorProcess:
    """`python -m routemesh_operator`, and what /proc says about it."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """The distribution server."""
        return f"http://127.0.0.1:{self.port}"

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM (the peak) in KiB."""
        found = {}
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
        return found

    def published(self) -> dict[tuple[str, str, str], float]:
        """When the operator logged publishing each (namespace, policy, version), wall clock."""
        found: dict[tuple[str, str, str], float] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = PUBLISHING.match(line)
            if match:
                stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found.setdefault((match[2], match[3], match[4]), stamp)
        return found

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far."""
        stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        """The distribution server's /healthz, or None while it is not listening."""
        try:
            async with session.get(f"{self.url}/healthz") as response:
                body: dict[str, Any] = await response.json()
                return body
        except (aiohttp.ClientError, OSError):
            return None

    async def wait_until(
        self, done: Callable[[dict[str, Any]], bool], within: float = 600
    ) -> float:
        """Poll /healthz until `done(body)`; return when it held."""
        deadline = time.perf_counter() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while time.perf_counter() < deadline:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"the operator exited; see {self.log_path}")
                body = await self.health(session)
                if body is not None and done(body):
                    return time.perf_counter()
                await asyncio.sleep(0.05)
        raise TimeoutError(f"the operator did not get there in {within} s; see {self.log_path}")

    async def settle(self, quiet: float = 2.0, within: float = 300) -> float:
        """Wait until the operator used under 2% of a core for `quiet` seconds; return when."""
        deadline = time.perf_counter() + within
        samples: list[tuple[float, float]] = []
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            samples.append((now, self.cpu_seconds()))
            old = [s for s in samples if s[0] <= now - quiet]
            if old and (samples[-1][1] - old[-1][1]) < 0.02 * quiet:
                return old[-1][0]
            await asyncio.sleep(0.25)
        return time.perf_counter()


@contextlib.contextmanager
def operator_process(plane: LocalControlPlane, log_path: Path) -> Iterator[OperatorProcess]:
    """The operator as its own process, standalone, watching the whole cluster."""
    port = free_port()
    inherited = dict(os.environ)  # noqa: TID251  (the child inherits this process's environment)
    env = {
        **inherited,
        "ROUTEMESH_OPERATOR_KUBECONFIG": str(plane.kubeconfig),
        "ROUTEMESH_OPERATOR_STANDALONE": "true",
        "ROUTEMESH_OPERATOR_DISTRIBUTION_HOST": "127.0.0.1",
        "ROUTEMESH_OPERATOR_DISTRIBUTION_PORT": str(port),
    }
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "routemesh_operator"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
    try:
        yield OperatorProcess(popen, port, log_path)
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)  # kopf stops gracefully on SIGTERM
            try:
                popen.wait(20)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10)


# ----------------------------------------------------------------------------- the status side


def _programmed(item: dict[str, Any]) -> bool:
    status = item.get("status") or {}
    if status.get("observedGeneration") != item["metadata"].get("generation"):
        return False
    return any(
        c.get("type") == "Programmed" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


class PolicyWatch:
    """Every RoutingPolicy's status as the API server reports it: list, then watch.

    Keeps each policy's status history with the time each event arrived, so that a question
    about a change ("when did status first show it synced?") is answered from the event's
    arrival, not from when it was asked.
    """

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self.history: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]] = {}
        self.programmed: set[tuple[str, str]] = set()
        self._changed = asyncio.Event()
        self._listed = asyncio.Event()
        self._last_event = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[PolicyWatch]:
        """Watch until the block ends."""
        self._session = aiohttp.ClientSession(
            base_url=self._credentials.server,
            connector=aiohttp.TCPConnector(ssl=self._credentials.ssl_context()),
            timeout=aiohttp.ClientTimeout(total=None, connect=10),
            read_bufsize=2**22,
        )
        self._task = asyncio.create_task(self._run())
        try:
            await asyncio.wait_for(self._listed.wait(), 30)
            yield self
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self._session.close()

    async def _run(self) -> None:
        if self._session is None:
            raise RuntimeError("PolicyWatch._run outside `running()`")
        while True:
            try:
                async with self._session.get(POLICIES_PATH) as response:
                    listing = await response.json()
                for item in listing.get("items") or ():
                    self._record(item)
                self._listed.set()
                params = {
                    "watch": "1",
                    "resourceVersion": listing["metadata"]["resourceVersion"],
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "3600",
                }
                async with self._session.get(POLICIES_PATH, params=params) as response:
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break  # resourceVersion too old: list again
                        if event["type"] == "DELETED":
                            meta = event["object"]["metadata"]
                            self.programmed.discard((meta["namespace"], meta["name"]))
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self._record(event["object"])
            except (aiohttp.ClientError, TimeoutError, OSError):
                await asyncio.sleep(0.5)

    def _record(self, item: dict[str, Any]) -> None:
        now = time.perf_counter()
        meta = item["metadata"]
        key = (meta["namespace"], meta["name"])
        self.history.setdefault(key, []).append((now, item.get("status") or {}))
        if _programmed(item):
            self.programmed.add(key)
        else:
            self.programmed.discard(key)
        self._last_event = now
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, holds: Callable[[], bool], within: float) -> float | None:
        """Wait until `holds()`; the arrival time of the event that made it hold, or None."""
        deadline = time.perf_counter() + within
        while not holds():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self._last_event

    async def first_status(
        self,
        key: tuple[str, str],
        holds: Callable[[dict[str, Any]], bool],
        after: float,
        within: float,
    ) -> float | None:
        """When the first status of `key` that arrived after `after` and satisfies `holds` came."""
        deadline = time.perf_counter() + within
        seen = 0
        while True:
            events = self.history.get(key, [])
            for arrived, status in events[seen:]:
                if arrived >= after and holds(status):
                    return arrived
            seen = len(events)
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def updates(self, key: tuple[str, str], start: float, end: float) -> int:
        """How many status events of `key` arrived in [start, end]."""
        return sum(1 for arrived, _ in self.history.get(key, []) if start <= arrived <= end)


# ----------------------------------------------------------------------------- the sidecars


class Fleet:
    """The simulated sidecars: real watch sources in one event loop, one pod name each."""

    def __init__(self, url: str, namespace: str, token_files: list[Path]) -> None:
        size = self.size = len(token_files)
        self.actives = [ActiveRouteTable() for _ in range(size)]
        self.sources = [
            WatchRouteTableSource(
                WatchTarget(
                    url=url,
                    namespace=namespace,
                    pod=pod_name(i),
                    labels=dict(POD_LABELS),
                    token_file=token_files[i],
                ),
                active,
            )
            for i, active in enumerate(self.actives)
        ]
        # generation -> when each sidecar first ran a table of it (None until it did)
        self.swapped_at: dict[int, list[float | None]] = {}
        self.running: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        for index, active in enumerate(self.actives):
            active.on_swap(functools.partial(self._swapped, index))

    def _swapped(self, index: int, table: RouteTable) -> None:
        now = time.perf_counter()  # the sidecar has parsed it and runs it from now on
        generation = table.sources[0].generation
        times = self.swapped_at.setdefault(generation, [None] * self.size)
        if times[index] is None:
            times[index] = now
            self.running[generation] = self.running.get(generation, 0) + 1
            if self.running[generation] == self.size:
                self._changed.set()
                self._changed = asyncio.Event()

    async def start(self) -> None:
        """Ask once without waiting (as a sidecar starts), then watch."""
        await asyncio.gather(*(source.load_once() for source in self.sources))
        self._tasks = [asyncio.create_task(source.run()) for source in self.sources]

    async def stop(self) -> None:
        """Stop watching and close every session."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(source.close() for source in self.sources))

    async def all_running(self, generation: int, within: float) -> bool:
        """Wait until every sidecar runs a table of `generation`."""
        deadline = time.perf_counter() + within
        while self.running.get(generation, 0) < self.size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def version_label(self) -> str:
        """The version every sidecar runs (they agree once `all_running` returned)."""
        current = self.actives[0].current
        return current.version_label if current is not None else ""


# ----------------------------------------------------------------------------- measurements


@dataclass
class Propagation:
    """Seconds from `kubectl apply` per change, for all sidecars and for each."""

    label: str
    all_have: list[float] = field(default_factory=list)
    per_sidecar: list[float] = field(default_factory=list)
    kubectl: list[float] = field(default_factory=list)
    compiled: list[float] = field(default_factory=list)  # until the operator logs publishing
    after_kubectl: list[float] = field(default_factory=list)
    status_synced: list[float] = field(default_factory=list)
    status_updates: list[int] = field(default_factory=list)
    operator_cpu: list[float] = field(default_factory=list)
    lost: int = 0  # changes that did not reach every sidecar within the timeout
    rss_kib: int = 0  # the operator's, with the sidecars watching


@dataclass
class Cluster:
    """How the benchmark reaches the control plane: kubectl, the status watch, a scratch dir."""

    kubectl: AsyncKubectl
    watch: PolicyWatch
    workdir: Path


def synced_to(version: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a policy's status says every sidecar runs `version`."""

    def holds(status: dict[str, Any]) -> bool:
        synced = (status.get("sidecars") or {}).get("synced")
        return status.get("routeTableVersion") == version and synced == SIDECARS

    return holds


async def propagation(
    label: str,
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    *,
    changes: int,
    bound: bool = False,
) -> Propagation:
    """Change one policy `changes` times while 200 sidecars watch it.

    With `bound`, each sidecar has a Pod object and a token bound to it, as a projected token is
    in a real pod: the operator then reviews each token and reads each pod's labels itself.
    """
    kubectl, watch = cluster.kubectl, cluster.watch
    result = Propagation(label)
    await _prepare(cluster, namespace)
    if bound:
        token_files = await _bound_tokens(cluster, namespace)
    else:
        token_files = [await _token(cluster, namespace)] * SIDECARS
    key = (namespace, PROPAGATION_POLICY)
    fleet = Fleet(operator.url, namespace, token_files)
    measured: list[tuple[str, float]] = []  # (version, wall clock at the start)
    try:
        await fleet.start()
        for step in range(1, WARMUP_CHANGES + changes + 1):
            cpu_before = operator.cpu_seconds()
            started_wall = time.time()
            started = time.perf_counter()
            applied = await kubectl.run(
                "apply", "-o", "json", "-f", "-", stdin=_policy_manifest(namespace, step)
            )
            returned = time.perf_counter()
            generation = int(json.loads(applied)["metadata"]["generation"])
            if not await fleet.all_running(generation, CHANGE_TIMEOUT):
                result.lost += 1
                continue
            times = [t for t in fleet.swapped_at[generation] if t is not None]
            version = fleet.version_label()
            synced = await watch.first_status(
                key, synced_to(version), after=started, within=CHANGE_TIMEOUT
            )
            await asyncio.sleep(SETTLE_PAUSE)
            if step <= WARMUP_CHANGES:
                continue
            measured.append((version, started_wall))
            result.all_have.append(max(times) - started)
            result.per_sidecar.extend(t - started for t in times)
            result.kubectl.append(returned - started)
            result.after_kubectl.append(max(times) - returned)
            if synced is not None:
                result.status_synced.append(synced - started)
                result.status_updates.append(watch.updates(key, started, synced))
            result.operator_cpu.append(operator.cpu_seconds() - cpu_before)
        result.rss_kib = operator.memory_kib()["VmRSS"]
    finally:
        await fleet.stop()
    published = operator.published()
    for version, started_wall in measured:
        stamp = published.get((namespace, PROPAGATION_POLICY, version))
        if stamp is not None:
            result.compiled.append(stamp - started_wall)
    return result


def _policy_manifest(namespace: str, step: int) -> str:
    """The watched policy at one step: each step a different total timeout, so new content."""
    policy = routing_policy(PROPAGATION_POLICY, "chat", "provider-a", "provider-b", 10 + step)
    return in_namespace(namespace, [policy])


async def _prepare(cluster: Cluster, namespace: str) -> None:
    """The namespace, its ServiceAccount and backends, and the policy, Programmed."""
    kubectl = cluster.kubectl
    setup = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}},
        secret("provider-key"),
        model_backend("provider-a", "provider-key"),
        model_backend("provider-b", "provider-key"),
    ]
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    await kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(ns))
    await _wait_for_service_account(kubectl, namespace)
    await kubectl.run("apply", "-f", "-", stdin=in_namespace(namespace, setup))
    await kubectl.run("apply", "-f", "-", stdin=_policy_manifest(namespace, 0))
    key = (namespace, PROPAGATION_POLICY)
    await cluster.watch.until(lambda: key in cluster.watch.programmed, within=60)


async def _token(cluster: Cluster, namespace: str, pod: str | None = None) -> Path:
    """A token of the `app` ServiceAccount for the audience `routemesh`, in a file."""
    bound = ["--bound-object-kind", "Pod", "--bound-object-name", pod] if pod else []
    token = await cluster.kubectl.run(
        "create",
        "token",
        "app",
        "-n",
        namespace,
        "--audience",
        AUDIENCE,
        "--duration",
        "2h",
        *bound,
    )
    token_file = cluster.workdir / f"token-{namespace}-{pod or 'shared'}"
    token_file.write_text(token.strip())
    return token_file


async def _bound_tokens(cluster: Cluster, namespace: str) -> list[Path]:
    """A Pod per sidecar (never scheduled: there is no kubelet) and a token bound to each."""
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name(i), "labels": dict(POD_LABELS)},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "app"}]},
        }
        for i in range(SIDECARS)
    ]
    await cluster.kubectl.run("apply", "-f", "-", stdin=in_namespace(namespace, pods))
    parallel = asyncio.Semaphore(4)

    async def one(index: int) -> Path:
        async with parallel:
            return await _token(cluster, namespace, pod_name(index))

    return list(await asyncio.gather(*(one(i) for i in range(SIDECARS))))


async def _wait_for_service_account(kubectl: AsyncKubectl, namespace: str) -> None:
    for _ in range(300):
        with contextlib.suppress(RuntimeError):
            await kubectl.run("get", "serviceaccount", "default", "-n", namespace)
            return
        await asyncio.sleep(0.1)


@dataclass
class Memory:
    """RSS in KiB at each point, and the times of the initial compile and of a restart."""

    idle: dict[str, int] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)
    restarted: dict[str, int] = field(default_factory=dict)
    kubectl_seconds: float = 0.0
    programmed_seconds: float | None = None
    programmed_by_kubectl: int = 0
    restart_ready_seconds: float = 0.0
    restart_board_seconds: float = 0.0


async def create_everything(operator: OperatorProcess, cluster: Cluster, memory: Memory) -> None:
    """Idle RSS; apply 10 namespaces of policies and backends; time until all are Programmed."""
    kubectl, watch = cluster.kubectl, cluster.watch
    await operator.wait_until(lambda body: True, within=120)
    await operator.settle()
    memory.idle = operator.memory_kib()
    total = NAMESPACES * POLICIES_PER_NAMESPACE
    started = time.perf_counter()
    for index in range(NAMESPACES):
        _, manifest = memory_namespace(index)
        await kubectl.run("apply", "-f", "-", stdin=manifest)
    memory.kubectl_seconds = time.perf_counter() - started

    def all_programmed() -> bool:
        ours = [k for k in watch.programmed if k[0].startswith("bench-mem-")]
        return len(ours) >= total

    done = await watch.until(all_programmed, within=900)
    memory.programmed_seconds = done - started if done is not None else None
    await operator.settle()
    memory.loaded = operator.memory_kib()
    listing = json.loads(await kubectl.run("get", "routingpolicies", "-A", "-o", "json"))
    memory.programmed_by_kubectl = sum(
        1
        for item in listing["items"]
        if item["metadata"]["namespace"].startswith("bench-mem-") and _programmed(item)
    )


async def measure(plane: LocalControlPlane, workdir: Path) -> tuple[list[Propagation], Memory]:
    """Everything, on one control plane, with three operator processes in turn."""
    kubectl = AsyncKubectl(plane.binaries.kubectl, plane.kubeconfig)
    credentials = Credentials.load(str(plane.kubeconfig))
    memory = Memory()
    results: list[Propagation] = []
    async with PolicyWatch(credentials).running() as watch:
        cluster = Cluster(kubectl, watch, workdir)
        # 1. Propagation on an otherwise empty cluster.
        with operator_process(plane, workdir / "operator-1.log") as operator:
            await operator.wait_until(lambda body: True, within=120)
            results.append(
                await propagation("empty cluster", operator, cluster, "bench-prop", changes=CHANGES)
            )
            results.append(
                await propagation(
                    "empty cluster, a pod-bound token each",
                    operator,
                    cluster,
                    "bench-prop-bound",
                    changes=CHANGES,
                    bound=True,
                )
            )
        await kubectl.run(
            "delete", "namespace", "bench-prop", "bench-prop-bound", "--wait=true", "--timeout=180s"
        )
        # 2. Memory: idle, then 1,000 policies and 200 backends.
        with operator_process(plane, workdir / "operator-2.log") as operator:
            await create_everything(operator, cluster, memory)
        # 3. A restart with everything in place, then propagation beside the 1,000 policies
        # (in a namespace of its own, then in one of theirs).
        total = NAMESPACES * POLICIES_PER_NAMESPACE
        with operator_process(plane, workdir / "operator-3.log") as operator:
            started = time.perf_counter()
            ready = await operator.wait_until(lambda body: True, within=300)
            board = await operator.wait_until(lambda b: int(b["revision"]) >= total, within=600)
            memory.restart_ready_seconds = ready - started
            memory.restart_board_seconds = board - started
            await operator.settle()
            memory.restarted = operator.memory_kib()
            for label, namespace in (
                (f"beside {total:,} policies", "bench-prop-loaded"),
                (f"among {POLICIES_PER_NAMESPACE} policies of its namespace", "bench-mem-00"),
            ):
                results.append(
                    await propagation(label, operator, cluster, namespace, changes=LOADED_CHANGES)
                )
    return results, memory


# ----------------------------------------------------------------------------- reporting


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly between the closest ranks."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(value: float) -> str:
    return f"{value * 1000:.0f}"


def _row(label: str, samples: list[float]) -> str:
    if not samples:
        return f"| {label} | - | - | - | - | 0 |"
    cells = [percentile(samples, q) for q in (50, 90, 99)] + [max(samples)]
    return f"| {label} | {' | '.join(_ms(c) for c in cells)} | {len(samples)} |"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def report(results: list[Propagation], memory: Memory, loads: list[str]) -> list[str]:
    """Markdown tables for docs/benchmarks.md."""
    rows = [f"load average before and after: {' / '.join(loads)}", ""]
    rows += [
        f"Propagation to {SIDECARS} sidecars, ms from just before `kubectl apply`:",
        "",
        "| measure | p50 | p90 | p99 | max | samples |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        rows += [
            _row(f"{result.label}: all {SIDECARS} run the new version", result.all_have),
            _row(f"{result.label}: each sidecar runs it", result.per_sidecar),
            _row(f"{result.label}: `kubectl apply` itself", result.kubectl),
            _row(f"{result.label}: the operator logs publishing the table", result.compiled),
            _row(f"{result.label}: all run it, after kubectl returned", result.after_kubectl),
            _row(
                f"{result.label}: status shows synced == {SIDECARS} (informational)",
                result.status_synced,
            ),
        ]
    rows += [
        "",
        "| run | goal: p99 of all-have < 1 s | status patches per change | "
        "operator CPU per change | operator RSS, sidecars watching | changes lost |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        p99 = percentile(result.all_have, 99)
        met = "yes" if p99 < GOAL_SECONDS else "**no**"
        updates = statistics.median(result.status_updates) if result.status_updates else 0
        cpu = statistics.median(result.operator_cpu) if result.operator_cpu else 0.0
        rows.append(
            f"| {result.label} | {met} ({_ms(p99)} ms) | {updates:.0f} (median) | "
            f"{_ms(cpu)} ms (median) | {_mib(result.rss_kib)} MiB | {result.lost} |"
        )
    total = NAMESPACES * POLICIES_PER_NAMESPACE
    idle, loaded = memory.idle.get("VmRSS", 0), memory.loaded.get("VmRSS", 0)
    programmed = lag = "never"
    if memory.programmed_seconds is not None:
        programmed = f"{memory.programmed_seconds:.1f} s"
        lag = f"{memory.programmed_seconds - memory.kubectl_seconds:.1f} s"
    restarted = memory.restarted.get("VmRSS", 0)
    rows += [
        "",
        f"Memory and compile, {total} RoutingPolicies and {NAMESPACES * BACKENDS_PER_NAMESPACE} "
        f"ModelBackends (with Secrets) in {NAMESPACES} namespaces:",
        "",
        "| measure | value |",
        "|---|---|",
        f"| RSS idle (VmRSS) | {_mib(idle)} MiB |",
        f"| RSS with everything Programmed (VmRSS / VmHWM peak) | {_mib(loaded)} MiB / "
        f"{_mib(memory.loaded.get('VmHWM', 0))} MiB |",
        f"| RSS per policy ((after - idle) / {total}, backends and Secrets included) | "
        f"{(loaded - idle) / total:.1f} KiB |",
        f"| first `kubectl apply` to all {total} Programmed | {programmed} |",
        f"| of which the `kubectl apply` calls (one per namespace) | "
        f"{memory.kubectl_seconds:.1f} s |",
        f"| from the last `kubectl apply` returning to all Programmed | {lag} |",
        f"| Programmed=True by `kubectl get rp -A -o json` | "
        f"{memory.programmed_by_kubectl} of {total} |",
        f"| restart: distribution server listening | {memory.restart_ready_seconds:.1f} s |",
        f"| restart: all {total} tables on the board | {memory.restart_board_seconds:.1f} s |",
        f"| RSS after the restart (VmRSS / VmHWM) | {_mib(restarted)} MiB"
        f" / {_mib(memory.restarted.get('VmHWM', 0))} MiB |",
        f"| RSS per policy after the restart ((restarted - idle) / {total}) | "
        f"{(restarted - idle) / total:.1f} KiB |",
    ]
    return rows


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run() -> list[str]:
    """Start a control plane, measure, stop everything; Markdown rows."""
    settings = ControlPlaneSettings()
    binaries = Binaries.locate(settings)
    loads = [_load()]
    with tempfile.TemporaryDirectory(prefix="routemesh-bench-operator-") as tmp:
        workdir = Path(tmp)
        plane = LocalControlPlane(binaries, workdir / "controlplane", settings)
        try:
            plane.start(crds=sorted((REPO_ROOT / "crds").glob("*.yaml")))
            results, memory = asyncio.run(measure(plane, workdir))
        finally:
            plane.stop()
    loads.append(_load())
    return report(results, memory, loads)


if __name__ == "__main__":
    for line in run():
        print(line)
