"""A sidecar sent SIGTERM with streams in flight drains: the streams finish, nothing new gets in.

The sidecar runs as a process, as in a pod; the app's streams go through the official OpenAI
client. After SIGTERM the sidecar's /readyz says draining, its listener refuses new connections,
every stream in flight ends with all its chunks and its finish reason, and the process exits on
its own, inside its drain period.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from routemesh_testing.fakes import OPENAI_KEY, FakeOpenAI, Reply
from routemesh_testing.serving import ServerThread
from routemesh_testing.sidecar import SidecarProcess, write_table
from routemesh_testing.tables import backend, route, table
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(60)

WORDS = 60
GAP = 0.05  # a stream takes about 3 s


def stream_once(base_url: str, results: list[Any]) -> None:
    with openai.OpenAI(base_url=base_url + "/v1", api_key="app", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "tell me"}], stream=True
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    results.append((text, finish))


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def ready_status(admin_url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(admin_url + "/readyz", timeout=2) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_sigterm_finishes_the_streams_in_flight_and_refuses_new_connections(tmp_path: Path):
    fake = FakeOpenAI(name="fake", api_key=OPENAI_KEY)
    fake.always(
        Reply(text=" ".join(f"w{i}" for i in range(WORDS)), chunks=WORDS, chunk_gap_seconds=GAP)
    )
    with ServerThread(fake.app) as server:
        path = tmp_path / "table.json"
        write_table(
            path,
            table(
                {"p": backend(server.url + "/v1", key_env="OPENAI_KEY")}, route("chat", ("p", "m"))
            ),
        )
        env = {
            **os.environ,
            "OPENAI_KEY": OPENAI_KEY,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "ROUTEMESH_SIDECAR_DRAIN_SECONDS": "10",
        }
        with SidecarProcess(path, env, tmp_path / "sidecar.log") as sidecar:
            assert sidecar.process is not None
            results: list[Any] = []
            streams = [
                threading.Thread(target=stream_once, args=(sidecar.base_url, results))
                for _ in range(4)
            ]
            for thread in streams:
                thread.start()
            assert poll_until(
                lambda: fake.count("/v1/chat/completions"), lambda n: n == 4, timeout=10
            )
            signalled = time.monotonic()
            sidecar.process.send_signal(signal.SIGTERM)
            assert poll_until(
                lambda: ready_status(sidecar.admin_url), lambda code: code == 503, timeout=5
            )
            assert poll_until(lambda: refused(sidecar.port), bool, timeout=5), "no new connection"
            # Refused while it drains, not because it has gone: the streams are still running.
            assert sidecar.process.poll() is None, "the sidecar is still up, draining"
            assert len(results) < 4, "the streams in flight have not ended yet"
            for thread in streams:
                thread.join(timeout=20)
            exit_code = sidecar.process.wait(timeout=15)
            exited_after = time.monotonic() - signalled
    expected = " ".join(f"w{i}" for i in range(WORDS))
    assert len(results) == 4, "every stream in flight finished"
    for text, finish in results:
        assert text.split() == expected.split(), "no stream was cut short"
        assert finish == ["stop"]
    assert exit_code == 0
    assert exited_after < 9, "it exits when the streams are done, not at the end of the period"
