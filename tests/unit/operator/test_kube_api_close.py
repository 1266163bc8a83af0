"""KubeApi leaves no socket behind when its loop ends, even with a slow TLS server.

The Go API server does not answer a client's close_notify at once. A connection that aiohttp
closes on release (an answer with `Connection: close`, an error) then waits for it untracked;
before Python 3.12.8 its socket outlived `asyncio.run` and raised a ResourceWarning at the next
garbage collection, in whatever test ran then (seen in CI, in the webhook rotation test).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from routemesh_operator.kube import ApiError, Credentials, KubeApi
from routemesh_testing.pki import CertificateAuthority

pytestmark = pytest.mark.timeout(20)


class LingeringTlsServer:
    """Answers one request per connection with `Connection: close`, then lingers before closing."""

    def __init__(self, context: ssl.SSLContext, linger: float) -> None:
        self._context = context
        self._linger = threading.Event()
        self._linger_seconds = linger
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with self._context.wrap_socket(connection, server_side=True) as stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += stream.recv(4096)
            status = b"409 Conflict" if b"conflict" in head else b"200 OK"
            body = b'{"kind": "Status"}'
            stream.sendall(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            self._linger.wait(self._linger_seconds)  # no prompt reply to close_notify

    def close(self) -> None:
        self._linger.set()
        self._listener.close()


@pytest.fixture
def lingering_server(tmp_path: Path) -> Iterator[tuple[LingeringTlsServer, Path]]:
    authority = CertificateAuthority("kube-close-test")
    cert, key = authority.issue_serving("localhost").write(tmp_path, "serving")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(authority.cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = LingeringTlsServer(context, linger=5)
    threading.Thread(target=server.serve, name="lingering-tls", daemon=True).start()
    yield server, ca_file
    server.close()


def test_no_socket_outlives_the_loop_after_a_close_on_release(lingering_server):
    server, ca_file = lingering_server
    credentials = Credentials(server=f"https://127.0.0.1:{server.port}", ca_file=str(ca_file))

    async def calls() -> None:
        async with KubeApi(credentials) as api:
            assert await api.request("GET", "/api") == {"kind": "Status"}
            with pytest.raises(ApiError):
                await api.request("GET", "/api", params={"case": "conflict"})

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            asyncio.run(calls())
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []
