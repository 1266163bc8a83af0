"""A small async Kubernetes API client for what the operator writes.

kopf watches and reads; this client does the few writes kopf does not do for us: status patches
of resources other than the one a handler was called for, server-side apply of the objects the
operator owns (route-table ConfigMaps, vLLM Deployments and Services), Events, and TokenReviews.
It is typed end to end and has no generated models: bodies are plain dicts.

Credentials come from the kubeconfig (or the in-cluster service account) through the official
client's loader, once, when the operator starts. Called by the reconciler, the publisher and the
distribution server; it never decides anything itself.
"""

from __future__ import annotations

import ssl
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

FIELD_MANAGER = "routemesh-operator"
IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 (a path)


class ApiError(RuntimeError):
    """The API server refused a request; `status` is the HTTP status, `reason` its reason."""

    def __init__(self, method: str, path: str, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.reason = str(body.get("reason", ""))
        super().__init__(f"{method} {path}: {status} {body.get('message', body)}")


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are."""

    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None  # in a pod: the projected token, which the kubelet rotates
    verify: bool = True

    @classmethod
    def load(cls, kubeconfig: str | None = None) -> Credentials:
        """In-cluster credentials when running in a pod, else the kubeconfig's current context."""
        from kubernetes import client, config  # noqa: PLC0415  (start-up only)

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            return cls.from_kubeconfig(kubeconfig)
        return cls._from_configuration(configuration, IN_CLUSTER_TOKEN)

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: str | None = None, context: str | None = None
    ) -> Credentials:
        """A kubeconfig's context (its current one by default), never the in-cluster account.

        Raises the client's `ConfigException` when there is no usable kubeconfig.
        """
        from kubernetes import client, config  # noqa: PLC0415  (start-up only)

        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        return cls._from_configuration(configuration, None)

    @classmethod
    def _from_configuration(cls, configuration: Any, token_file: str | None) -> Credentials:
        keys = configuration.api_key or {}
        # The loader files the token under BearerToken (older releases: authorization), as
        # "Bearer <token>".
        header = str(keys.get("BearerToken") or keys.get("authorization") or "")
        return cls(
            server=str(configuration.host),
            ca_file=configuration.ssl_ca_cert,
            cert_file=configuration.cert_file,
            key_file=configuration.key_file,
            token=header.removeprefix("Bearer ").strip() or None,
            token_file=token_file,
            verify=bool(configuration.verify_ssl),
        )

    def bearer_token(self) -> str | None:
        """The token to send now: re-read from its file, since a projected token rotates."""
        if self.token_file:
            with open(self.token_file, encoding="utf-8") as file:
                return file.read().strip()
        return self.token

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the cluster's CA and presents our client certificate."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class KubeApi:
    """JSON over HTTPS to the API server, with one pooled session."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeApi:
        headers = {"Accept": "application/json", "User-Agent": FIELD_MANAGER}
        self._session = aiohttp.ClientSession(
            base_url=self._credentials.server,
            headers=headers,
            # A TLS connection closed on release (an error answer, an expired keep-alive)
            # waits for the server's close_notify, untracked. On Python before 3.12.8 its
            # socket then outlives the loop unless the connector aborts it on close (later
            # versions fixed asyncio, and aiohttp warns that the option is moot there).
            connector=aiohttp.TCPConnector(
                ssl=self._credentials.ssl_context(),
                limit=32,
                enable_cleanup_closed=sys.version_info < (3, 12, 8),
            ),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One call; a refusal raises `ApiError` with the server's reason."""
        if self._session is None:
            raise RuntimeError("KubeApi used outside `async with`")
        headers = {"Content-Type": content_type} if body is not None else {}
        token = self._credentials.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self._session.request(
            method, path, json=body, params=params, headers=headers
        ) as response:
            payload: dict[str, Any] = await response.json(content_type=None) or {}
            if response.status >= 400:
                raise ApiError(method, path, response.status, payload)
            return payload

    async def get(self, path: str, **params: str) -> dict[str, Any] | None:
        """The object at `path`, or None when it does not exist."""
        try:
            return await self.request("GET", path, params=params or None)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def apply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply, as the operator's field manager, taking over conflicting fields."""
        return await self.request(
            "PATCH",
            path,
            body,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
        )

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (status patches go to the `/status` subresource path)."""
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a new object into the collection at `path`."""
        return await self.request("POST", path, body)

    async def delete(self, path: str) -> None:
        """Delete the object; one already gone is not an error."""
        try:
            await self.request("DELETE", path)
        except ApiError as exc:
            if exc.status != 404:
                raise


def namespaced(group_version: str, namespace: str, plural: str, name: str | None = None) -> str:
    """The API path of a namespaced collection, or of one object in it."""
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


def labels_of(body: dict[str, Any] | None) -> dict[str, str]:
    """An object's labels (none for an object that is not there)."""
    labels = ((body or {}).get("metadata") or {}).get("labels") or {}
    return {str(key): str(value) for key, value in labels.items()}
