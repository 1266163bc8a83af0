"""The whole system under test, for the reliability suite (e2e/): its parts and its traffic.

`System` holds what a scenario runs against: the control plane, the operator as a process it may
kill and restart, an app Pod's injected sidecar as a process, two fake providers behind fault
proxies (`primary` and `spare`) and the trace backend; e2e/conftest.py builds one per scenario.
`Traffic` sends requests through the sidecar with the official OpenAI client, from a thread,
while the scenario breaks things; every request carries its own trace id, so the scenario can
find its spans in the backend. Test support only.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import openai
import yaml

from routemesh_testing.controlplane import LocalControlPlane
from routemesh_testing.fakes import OPENAI_KEY
from routemesh_testing.faultproxy import FaultyUpstream
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import hosted_backend, key_secret, model_spec
from routemesh_testing.operator import OperatorProcess
from routemesh_testing.phoenix import PhoenixServer
from routemesh_testing.podrun import InjectedSidecar
from routemesh_testing.waiting import poll_until

OPERATOR_NAMESPACE = "routemesh-system"
CHAT = "/chat/completions"


def setup_documents(primary: str, spare: str, model: str = "m") -> list[dict[str, Any]]:
    """A key, two backends and a Fallback policy (primary, then spare) for `app: chat`."""
    models = [model_spec(served, context_window=128000) for served in ("m", "m2")]
    return [
        key_secret("provider-key", OPENAI_KEY),
        *(
            hosted_backend(name, url, models)
            for name, url in (("primary", primary), ("spare", spare))
        ),
        policy_document(model),
    ]


def policy_document(model: str, first: str = "primary") -> dict[str, Any]:
    """The policy, whose targets ask for `model` (changing it makes a new route table)."""
    second = "spare" if first == "primary" else "primary"
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "chat"},
        "spec": {
            "selector": {"matchLabels": {"app": "chat"}},
            "defaults": {
                "retry": {"attempts": 1},
                # Short, so that a provider that came back gets its probe within the scenario.
                "circuitBreaker": {"consecutiveFailures": 3, "baseOpenTime": "2s"},
                "timeouts": {"connect": "1s", "firstToken": "1s", "total": "20s"},
            },
            "routes": [
                {
                    "name": "chat",
                    "strategy": {"type": "Fallback"},
                    "targets": [
                        {"backend": first, "model": model},
                        {"backend": second, "model": model},
                    ],
                }
            ],
        },
    }


@dataclass
class Outcome:
    """One request as the app saw it."""

    trace_id: str
    status: int  # 0: no HTTP answer at all
    text: str
    backend: str
    error: str = ""
    started: float = 0.0  # time.monotonic() when it was sent


class Traffic:
    """Requests through the sidecar, one after another, from a thread, until stopped."""

    def __init__(self, base_url: str, pause: float = 0.02) -> None:
        self.base_url = base_url
        self.pause = pause
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        """Stop sending and return what every request got."""
        self._stop.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            raise AssertionError("the traffic thread did not stop within 60 s")
        return self.outcomes

    def wait_for(self, count: int, timeout: float = 60) -> None:
        """Block until at least `count` more requests have been answered; fail if they are not."""
        target = len(self.outcomes) + count
        poll_until(lambda: len(self.outcomes), lambda n: n >= target, timeout=timeout)
        if len(self.outcomes) < target:
            state = "running" if self._thread.is_alive() else "dead"
            raise AssertionError(
                f"only {len(self.outcomes)} of {target} requests answered in {timeout} s "
                f"(the traffic thread is {state})"
            )

    def _run(self) -> None:
        with openai.OpenAI(
            base_url=self.base_url, api_key="app", max_retries=0, timeout=30
        ) as client:
            while not self._stop.is_set():
                self.outcomes.append(self._one(client))
                time.sleep(self.pause)

    def _one(self, client: openai.OpenAI) -> Outcome:
        started = time.monotonic()
        outcome = self._send(client)
        outcome.started = started
        return outcome

    def _send(self, client: openai.OpenAI) -> Outcome:
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="m",
                messages=[{"role": "user", "content": "hello"}],
                extra_headers=headers,
            )
        except openai.APIStatusError as error:
            return Outcome(trace_id, error.status_code, "", "", str(error))
        except openai.APIError as error:
            return Outcome(trace_id, 0, "", "", f"{type(error).__name__}: {error}")
        try:
            text = raw.parse().choices[0].message.content or ""
            backend = raw.headers["x-routemesh-backend"]
        except Exception as error:  # a bad answer is an outcome, not a dead traffic thread
            return Outcome(trace_id, raw.status_code, "", "", f"{type(error).__name__}: {error}")
        return Outcome(trace_id, raw.status_code, text, backend)


def assert_nothing_lost(outcomes: list[Outcome]) -> None:
    """Every request answered 200, in full, by one of the two providers."""
    if not outcomes:
        raise AssertionError("no traffic flowed")
    failed = [o for o in outcomes if o.status != 200]
    if failed:
        raise AssertionError(f"{len(failed)} of {len(outcomes)} requests failed: {failed[:3]}")
    short = [o for o in outcomes if o.text != f"Hello from {o.backend}"]
    if short:
        raise AssertionError(f"{len(short)} answers were not whole: {short[:3]}")


@dataclass
class System:
    """What a scenario runs against."""

    plane: LocalControlPlane
    kubectl: Kubectl
    namespace: str
    operator: OperatorProcess
    sidecar: InjectedSidecar
    primary: FaultyUpstream
    spare: FaultyUpstream
    phoenix: PhoenixServer

    @property
    def base_url(self) -> str:
        """The app's OPENAI_BASE_URL."""
        return str(self.sidecar.app_env()["OPENAI_BASE_URL"])

    def policy_version(self) -> str | None:
        """The route-table version the policy's status shows."""
        status = self.kubectl.get("routingpolicy", "chat", namespace=self.namespace).get("status")
        found: str | None = (status or {}).get("routeTableVersion")
        return found

    def sidecar_version(self) -> str | None:
        """The route-table version the sidecar runs, from its /config_dump."""
        with urllib.request.urlopen(self.sidecar.admin_url + "/config_dump", timeout=5) as r:  # noqa: S310
            table = json.loads(r.read())["route_table"]
        return None if table is None else str(table["version"])

    def apply_policy(self, model: str, first: str = "primary") -> None:
        """Kubectl apply the policy with these targets."""
        self.kubectl.apply(yaml.safe_dump(policy_document(model, first)), namespace=self.namespace)
