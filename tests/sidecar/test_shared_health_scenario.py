"""Shared health end to end: two sidecars see a backend fail, a third avoids it untouched.

Three real sidecars watch a real distribution server (the operator's, served in a thread, with a
fixed token reviewer at the unit seam: TokenReview is tested against the API server elsewhere)
and route to fake providers behind fault proxies, which count what reaches them.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest

from routemesh_operator.api.v1alpha1.common import LabelSelector
from routemesh_operator.distribution.auth import Identity, Unauthenticated
from routemesh_operator.distribution.board import Board, Published
from routemesh_operator.distribution.server import DistributionServer
from routemesh_operator.distribution.shared_health import SharedHealth
from routemesh_operator.distribution.sync import SyncTracker
from routemesh_testing.fakes import OPENAI_KEY, FakeOpenAI
from routemesh_testing.faultproxy import FaultProxy, Status
from routemesh_testing.serving import ServerThread
from routemesh_testing.sidecar import SidecarThread
from routemesh_testing.tables import backend, route, table
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(90)

CHAT = "/chat/completions"


class NamespaceReviewer:
    """Tokens are `namespace:account` (the unit seam for TokenReview)."""

    async def authenticate(self, token: str) -> Identity:
        namespace, sep, account = token.partition(":")
        if not sep:
            raise Unauthenticated("bad token")
        return Identity(namespace, account)


class Provider:
    """A fake OpenAI-compatible provider behind a fault proxy that counts requests."""

    def __init__(self, stack: ExitStack, name: str) -> None:
        fake = stack.enter_context(ServerThread(FakeOpenAI(name=name, api_key=OPENAI_KEY).app))
        self.faults = FaultProxy(fake.url)
        self.url = stack.enter_context(ServerThread(self.faults.app)).url + "/v1"


@pytest.fixture
def providers() -> Iterator[tuple[Provider, Provider]]:
    with ExitStack() as stack:
        yield Provider(stack, "flaky"), Provider(stack, "steady")


def ask(sidecar: SidecarThread) -> Any:
    with openai.OpenAI(
        base_url=sidecar.openai_base_url, api_key="app", max_retries=0, timeout=20
    ) as client:
        return client.chat.completions.with_raw_response.create(
            model="any", messages=[{"role": "user", "content": "hi"}]
        )


async def _call(function: Any, *args: Any) -> Any:
    return function(*args)


def health_of(sidecar: SidecarThread) -> dict[str, Any]:
    with urllib.request.urlopen(f"{sidecar.admin_url}/config_dump", timeout=5) as response:  # noqa: S310
        health: dict[str, Any] = json.loads(response.read())["health"]
    return health


def breaker_of(sidecar: SidecarThread, name: str) -> dict[str, Any]:
    breakers: list[dict[str, Any]] = health_of(sidecar)["backends"][name]["breakers"]
    return breakers[0]


def test_a_backend_several_pods_saw_fail_is_avoided_by_a_pod_that_never_called_it(
    providers: tuple[Provider, Provider], tmp_path: Path
):
    flaky, steady = providers
    routes = table(
        {
            "flaky": backend(flaky.url, key_env="OPENAI_KEY"),
            "steady": backend(steady.url, key_env="OPENAI_KEY"),
        },
        route(
            "chat",
            ("flaky", "m"),
            ("steady", "m"),
            retry={"attempts": 1},
            circuit_breaker={"consecutive_failures": 1, "base_open_time": 60},
        ),
    )
    board = Board()
    board.publish(Published("apps", "chat", LabelSelector(), routes))
    shared = SharedHealth(min_reporters=2, window=60)
    server = DistributionServer(
        board,
        SyncTracker(),
        NamespaceReviewer(),  # type: ignore[arg-type]
        lambda _: None,
        default_wait=5,
        shared_health=shared,
    )
    token = tmp_path / "token"
    token.write_text("apps:web")
    flaky.faults.set_fault(Status(503), paths=(CHAT,))
    with ExitStack() as stack:
        operator = stack.enter_context(ServerThread(server.app(), name="distribution"))

        def sidecar(pod: str) -> SidecarThread:
            workdir = tmp_path / pod
            workdir.mkdir()
            return stack.enter_context(
                SidecarThread(
                    None,
                    workdir,
                    variables={"OPENAI_KEY": OPENAI_KEY},
                    discovery_url=operator.url,
                    discovery_token_path=token,
                    pod_name=pod,
                    pod_namespace="apps",
                )
            )

        first, second, third = sidecar("a"), sidecar("b"), sidecar("c")
        # One pod's failure is not enough to spread.
        assert ask(first).headers["x-routemesh-backend"] == "steady"
        assert breaker_of(first, "flaky")["state"] == "open"
        assert flaky.faults.received(CHAT) == 1
        # Read the operator's state on its own loop: it is not thread-safe.
        on_operator = operator.loop_thread.run
        reported = poll_until(lambda: on_operator(_call(shared.reports, "apps")), bool, timeout=20)
        assert reported == {("flaky", None): 1}
        assert on_operator(_call(shared.view, "apps")) == []
        assert health_of(second)["shared"] == []
        # A second pod sees it too: now the namespace agrees.
        assert ask(second).headers["x-routemesh-backend"] == "steady"
        assert flaky.faults.received(CHAT) == 2
        shared = poll_until(lambda: health_of(third)["shared"], bool, timeout=20)
        assert [(s["backend"], s["endpoint"]) for s in shared] == [("flaky", None)]
        assert shared[0]["reason"].startswith("2 pods")
        # The third pod never called `flaky`, yet goes straight to `steady`.
        answers = [ask(third).headers["x-routemesh-backend"] for _ in range(3)]
        assert answers == ["steady"] * 3
        assert flaky.faults.received(CHAT) == 2
        assert breaker_of(third, "flaky")["state"] == "open"
        transitions = third.running.health.recent
        assert any(t["reason"].startswith("shared: 2 pods") for t in transitions)
