"""Run an injected Pod's sidecar as a process, as a kubelet would, on a control plane with none.

No kubelet runs here, so `InjectedSidecar` does its part for the sidecar container of a stored
Pod: it writes each RouteMesh volume (the projected ServiceAccount token, minted with the real
TokenRequest API and bound to the Pod; the pod's labels; the route-table ConfigMap; the
credentials Secrets), resolves the container's environment (fieldRefs, secretKeyRefs and `$(VAR)`
references), and starts `python -m routemesh_sidecar` with it. Volumes are written under a work
directory and the environment is remapped to them, except the credentials, which go where the
route table says they are (the operator's compiler names absolute paths), and are removed
afterwards.

Test and demo support only: product code never imports it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from routemesh_testing.controlplane import terminate
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.sidecar import DRAIN_GRACE
from routemesh_testing.waiting import http_ok, poll_until

SIDECAR = "routemesh-sidecar"


def sidecar_container(pod: dict[str, Any]) -> dict[str, Any]:
    """The injected sidecar container of a stored Pod."""
    for container in pod["spec"].get("initContainers") or ():
        if container["name"] == SIDECAR:
            found: dict[str, Any] = container
            return found
    raise LookupError(f"pod {pod['metadata']['name']} has no {SIDECAR} container")


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env by name (value, or valueFrom)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or ()}


class InjectedSidecar:
    """The sidecar of a stored Pod, running as a process until the block ends."""

    def __init__(
        self,
        kubectl: Kubectl,
        pod: dict[str, Any],
        workdir: Path,
        *,
        image_env: Mapping[str, str] | None = None,
    ) -> None:
        """`image_env` is what the sidecar image's ENV would set (the container's env wins)."""
        self.kubectl = kubectl
        self.image_env = dict(image_env or {})
        self.pod = pod
        self.workdir = workdir
        self.container = sidecar_container(pod)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "sidecar.log"
        self._written: list[Path] = []
        self.env: dict[str, str] = {}  # what the process was started with, once it is

    @property
    def admin_url(self) -> str:
        """The admin listener, from the container's environment."""
        port = env_of(self.container)["ROUTEMESH_SIDECAR_ADMIN_PORT"]
        return f"http://127.0.0.1:{port}"

    def app_env(self) -> dict[str, Any]:
        """The environment the app container got (its base URLs)."""
        return env_of(self.pod["spec"]["containers"][0])

    def __enter__(self) -> InjectedSidecar:
        remap = self._write_volumes()
        env = self.env = self._environment(remap)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "routemesh_sidecar"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ready = poll_until(lambda: http_ok(f"{self.admin_url}/readyz", 1.0), bool, timeout=60)
        if not ready:
            self.__exit__(None, None, None)
            raise RuntimeError(f"sidecar not ready: {self.log_path.read_text()[-3000:]}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            terminate(self.process, grace=DRAIN_GRACE)
        for path in self._written:
            shutil.rmtree(path, ignore_errors=True)

    def _write_volumes(self) -> dict[str, Path]:
        volumes = {v["name"]: v for v in self.pod["spec"]["volumes"]}
        remap: dict[str, Path] = {}
        for mount in self.container["volumeMounts"]:
            if not mount["name"].startswith("routemesh-"):
                continue  # the API-access token every container gets; the sidecar never uses it
            volume = volumes[mount["name"]]
            if _holds_secrets(volume):
                target = Path(mount["mountPath"])
                self._written.append(target)
            else:
                target = self.workdir / mount["name"]
                remap[mount["mountPath"]] = target
            self._write_volume(volume, target)
        return remap

    def _write_volume(self, volume: dict[str, Any], directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for source in (volume.get("projected") or {}).get("sources") or ():
            if "serviceAccountToken" in source:
                self._write_token(source["serviceAccountToken"], directory)
            if "secret" in source:
                self._write_secret(source["secret"], directory)
            if "configMap" in source:
                self._write_configmap_items(source["configMap"], directory)
        if "downwardAPI" in volume:
            labels = self.pod["metadata"].get("labels") or {}
            for item in volume["downwardAPI"]["items"]:
                lines = [f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())]
                (directory / item["path"]).write_text("\n".join(lines) + "\n")
        if "configMap" in volume:
            found = self.kubectl.get(
                "configmap", volume["configMap"]["name"], namespace=self._namespace
            )
            for key, value in (found.get("data") or {}).items():
                (directory / key).write_text(value)

    def _write_token(self, token: dict[str, Any], directory: Path) -> None:
        metadata = self.pod["metadata"]
        minted = self.kubectl.run(
            "create",
            "token",
            self.pod["spec"].get("serviceAccountName") or "default",
            "-n",
            self._namespace,
            "--audience",
            token["audience"],
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            metadata["name"],
            "--bound-object-uid",
            metadata["uid"],
        ).stdout.strip()
        (directory / token["path"]).write_text(minted)

    def _write_configmap_items(self, source: dict[str, Any], directory: Path) -> None:
        found = self.kubectl.get("configmap", source["name"], namespace=self._namespace)
        data = found.get("data") or {}
        for item in source.get("items") or [{"key": k, "path": k} for k in data]:
            (directory / item["path"]).write_text(data[item["key"]])

    def _write_secret(self, source: dict[str, Any], directory: Path) -> None:
        secret = self.kubectl.get("secret", source["name"], namespace=self._namespace)
        for item in source["items"]:
            target = directory / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(secret["data"][item["key"]]))

    def _environment(self, remap: dict[str, Path]) -> dict[str, str]:
        fields = {
            "metadata.name": self.pod["metadata"]["name"],
            "metadata.namespace": self._namespace,
            "spec.nodeName": "node-1",  # no scheduler here: say where it would run
        }
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.workdir)}  # noqa: TID251
        env.update(self.image_env)
        for entry in self.container["env"]:
            source = entry.get("valueFrom") or {}
            if "secretKeyRef" in source:
                found = self._secret_value(source["secretKeyRef"])
                if found is None:
                    continue  # optional and absent: the kubelet leaves the variable unset
                value = found
            elif "fieldRef" in source:
                value = fields[source["fieldRef"]["fieldPath"]]
            else:
                value = entry["value"]
                for name, known in env.items():
                    value = value.replace(f"$({name})", known)
            for mount, local in remap.items():
                value = value.replace(mount, str(local))
            env[entry["name"]] = value
        return env

    def _secret_value(self, reference: dict[str, Any]) -> str | None:
        """A Secret's key, as the kubelet resolves `secretKeyRef`: None if optional and absent."""
        found = self.kubectl.run(
            "get", "secret", reference["name"], "-n", self._namespace, "-o", "json", check=False
        )
        data = (json.loads(found.stdout).get("data") or {}) if found.returncode == 0 else {}
        if reference["key"] in data:
            return base64.b64decode(data[reference["key"]]).decode()
        if reference.get("optional"):
            return None
        # The kubelet would not start the container (CreateContainerConfigError).
        raise LookupError(f"secret {reference['name']} has no key {reference['key']}")

    @property
    def _namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])


def _holds_secrets(volume: dict[str, Any]) -> bool:
    return any("secret" in s for s in (volume.get("projected") or {}).get("sources") or ())
