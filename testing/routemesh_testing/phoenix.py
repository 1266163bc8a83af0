"""The real OTel trace backend the demo and the end-to-end trace tests send spans to: Arize Phoenix.

`hack/build-phoenix.sh` (run by `make otel-backend` and `.ci/run`) installs the pinned server in
its own virtualenv; `Phoenix.locate()` finds it (or `ROUTEMESH_PHOENIX`), and a missing install is
an error, never a reason to skip. `PhoenixServer` starts it on 127.0.0.1 with a scratch working
directory and its telemetry off, and reads spans back through its REST API, the way a person's
query in its UI would. A sidecar selects the Phoenix project with the resource attribute
`openinference.project.name` (see `project_resource`). Test and demo support only.

Why Phoenix and not Jaeger, and what Phoenix costs, is in docs/architecture.md ("Traces").
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from routemesh_testing.controlplane import (
    REPO_ROOT,
    BinariesMissing,
    die_with_parent,
    free_port,
    terminate,
)

VERSIONS_SCRIPT = REPO_ROOT / "hack" / "versions.sh"
PROJECT_ATTRIBUTE = "openinference.project.name"
Span = dict[str, Any]


def project_resource(project: str) -> str:
    """`OTEL_RESOURCE_ATTRIBUTES` that put a process's spans in this Phoenix project."""
    return f"{PROJECT_ATTRIBUTE}={project}"


class PhoenixServer:
    """One Phoenix process on 127.0.0.1; a context manager that stops it and keeps its log."""

    def __init__(self, executable: Path, workdir: Path, *, start_timeout: float = 90.0) -> None:
        self.executable = executable
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.port = free_port()
        # Phoenix binds its OTLP/gRPC port on every interface whatever PHOENIX_HOST says; a free
        # port keeps it from colliding, and nothing here sends to it.
        self.grpc_port = free_port()
        self.log_path = workdir / "phoenix.log"
        self._popen: subprocess.Popen[bytes] | None = None

    @staticmethod
    def locate(environ: dict[str, str] | None = None) -> Path:
        """The `phoenix` executable from `ROUTEMESH_PHOENIX`, else the one the script installed."""
        environ = environ if environ is not None else dict(os.environ)  # noqa: TID251
        explicit = environ.get("ROUTEMESH_PHOENIX")
        if explicit:
            return Path(explicit)
        script = f"source {VERSIONS_SCRIPT}; routemesh_phoenix_dir"
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
        home = Path(result.stdout.strip())
        if result.returncode != 0 or not (home / ".complete").exists():
            raise BinariesMissing(
                f"Phoenix not installed at {home}: run `make otel-backend` "
                "(hack/build-phoenix.sh) first"
            )
        return home / "bin" / "phoenix"

    @property
    def url(self) -> str:
        """The web UI and REST API."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def otlp_endpoint(self) -> str:
        """What `OTEL_EXPORTER_OTLP_ENDPOINT` is set to (the sidecar adds `/v1/traces`)."""
        return self.url

    def trace_url(self, trace_id: str) -> str:
        """The UI page of one trace (Phoenix redirects to it inside its project)."""
        return f"{self.url}/redirects/traces/{trace_id}"

    def __enter__(self) -> PhoenixServer:
        self.start()
        try:
            self.wait_until_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start(self) -> None:
        """Start the process and return at once; `wait_until_healthy` waits for it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),  # noqa: TID251
            "HOME": str(self.workdir),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_WORKING_DIR": str(self.workdir / "data"),
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
            "PHOENIX_AGENTS_DISABLE_BASH": "true",
        }
        with self.log_path.open("wb") as log:
            self._popen = subprocess.Popen(
                [str(self.executable), "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509  (nothing else runs in the child)
            )

    def __exit__(self, *exc_info: object) -> None:
        if self._popen is not None:
            terminate(self._popen)
            self._popen = None

    def wait_until_healthy(self) -> None:
        """Return when `/healthz` answers 200; raise with the log if the process died or hung."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                raise RuntimeError(f"Phoenix exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"Phoenix not healthy in {self.start_timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The end of Phoenix's log, for error messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def spans(
        self,
        project: str,
        *,
        name: str | None = None,
        attributes: dict[str, Any] | None = None,
        trace_id: str | None = None,
    ) -> list[Span]:
        """The project's spans, by name, attribute values and trace; [] before it exists."""
        params: list[tuple[str, str]] = [("limit", "1000")]
        if name is not None:
            params.append(("name", name))
        if trace_id is not None:
            params.append(("trace_id", trace_id))
        for key, value in (attributes or {}).items():
            # Phoenix parses the value as JSON, so a string that looks like a number is quoted.
            params.append(("attribute", f"{key}:{json.dumps(value)}"))
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/v1/projects/{urllib.parse.quote(project)}/spans?{query}"
        found: list[Span] = []
        cursor: str | None = None
        while True:
            page_url = url + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
            try:
                with urllib.request.urlopen(page_url, timeout=10) as response:  # noqa: S310
                    page = json.load(response)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:  # the project appears with its first span
                    return []
                raise
            found.extend(page["data"])
            cursor = page.get("next_cursor")
            if not cursor:
                return found

    def trace(self, project: str, trace_id: str) -> list[Span]:
        """Every span of one trace in the project (filtered by the server)."""
        return self.spans(project, trace_id=trace_id)

    def wait_for(
        self,
        project: str,
        predicate: Callable[[list[Span]], bool],
        *,
        name: str | None = None,
        attributes: dict[str, Any] | None = None,
        trace_id: str | None = None,
        timeout: float = 30.0,
    ) -> list[Span]:
        """Poll the REST API until the matching spans satisfy `predicate`; return them."""
        deadline = time.monotonic() + timeout
        spans: list[Span] = []
        while time.monotonic() < deadline:
            spans = self.spans(project, name=name, attributes=attributes, trace_id=trace_id)
            if predicate(spans):
                return spans
            time.sleep(0.2)
        raise AssertionError(
            f"Phoenix project {project!r} had no matching spans in {timeout} s "
            f"(name={name!r}, attributes={attributes!r}, trace_id={trace_id!r}); last answer: "
            f"{spans[:3]!r}"
        )
