"""A minimal admission webhook server over TLS on 127.0.0.1, for tests.

Tests use it to prove that the real kube-apiserver calls a webhook through `clientConfig.url` and
stores what it patches. It runs a stdlib HTTPS server in a thread and hands each AdmissionReview
to a function the test gives; it holds no admission logic of its own.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from routemesh_testing.pki import CertificateAuthority

Review = dict[str, Any]
# Given the AdmissionReview request, return the JSON patch to apply (or None to allow unchanged).
PatchFunction = Callable[[Review], list[dict[str, Any]] | None]


class TLSWebhookServer:
    """Serve `POST /mutate` over TLS with a fresh CA; record every review it receives."""

    def __init__(self, patch: PatchFunction, workdir: Path) -> None:
        self._patch = patch
        self.reviews: list[Review] = []
        self.ca = CertificateAuthority("routemesh-test-webhook-ca")
        cert, key = self.ca.issue_serving("webhook.test").write(workdir, "webhook")
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        self._closed = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="test-webhook", daemon=True
        )

    @property
    def url(self) -> str:
        """The `clientConfig.url` to register."""
        return f"https://127.0.0.1:{self._server.server_address[1]}/mutate"

    @property
    def ca_bundle(self) -> str:
        """The `clientConfig.caBundle` to register (base64 PEM)."""
        return base64.b64encode(self.ca.cert_pem).decode()

    def __enter__(self) -> TLSWebhookServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving; later calls from the API server get connection refused. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review: Review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.reviews.append(review)
                body = json.dumps(outer._response(review)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Keep test output quiet."""

        return Handler

    def _response(self, review: Review) -> Review:
        request = review["request"]
        response: Review = {"uid": request["uid"], "allowed": True}
        patch = self._patch(request)
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        return {"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response}
