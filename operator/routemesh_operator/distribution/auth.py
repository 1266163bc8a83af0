"""Who is watching: a sidecar's ServiceAccount token, checked with a TokenReview.

The distribution server calls `authenticate` for every watch. The API server says whether the
token is valid and whose it is (`system:serviceaccount:<namespace>:<name>`); the namespace it
names is the only namespace whose tables that sidecar may read. Results are cached for a short
time by a hash of the token (never the token itself), so 200 sidecars re-watching do not cost
200 reviews each time. A token bound to a pod also names the pod.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from routemesh_operator.expiring import ExpiringCache
from routemesh_operator.kube import KubeApi, labels_of, namespaced

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105 (an API path)
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


@dataclass(frozen=True)
class Identity:
    """A sidecar, as the API server vouches for it."""

    namespace: str
    service_account: str
    pod: str | None = None


class Unauthenticated(Exception):
    """The token is missing, invalid, or not a ServiceAccount's."""


class TokenReviewer:
    """Authenticates tokens through the API server, with a short cache."""

    def __init__(
        self,
        api: KubeApi,
        audiences: tuple[str, ...] = (),
        cache_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._audiences = audiences
        self._cache: ExpiringCache[str, Identity | None] = ExpiringCache(
            cache_seconds, max_entries=4096, clock=clock
        )

    async def authenticate(self, token: str) -> Identity:
        """The identity behind a bearer token, or `Unauthenticated`."""
        if not token:
            raise Unauthenticated("no bearer token")
        key = hashlib.sha256(token.encode()).hexdigest()
        identity = await self._cache.get(key, lambda: self._review(token))
        if identity is None:
            raise Unauthenticated("the API server did not accept the token")
        return identity

    async def _review(self, token: str) -> Identity | None:
        spec: dict[str, object] = {"token": token}
        if self._audiences:
            spec["audiences"] = list(self._audiences)
        review = await self._api.create(
            TOKEN_REVIEWS,
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
        )
        status = review.get("status") or {}
        user = status.get("user") or {}
        username = str(user.get("username", ""))
        if not status.get("authenticated") or not username.startswith(SERVICE_ACCOUNT_PREFIX):
            return None
        namespace, _, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        pods = (user.get("extra") or {}).get(POD_NAME_EXTRA) or []
        return Identity(namespace, account, pods[0] if pods else None)


class PodLabels:
    """The labels of pods that watch, read from the API server and kept for a short time.

    Only pod-bound tokens lead here, so a sidecar cannot claim another pod's labels. The cache
    is keyed by namespace and pod name; a pod's labels rarely change, and a change shows within
    `cache_seconds`.
    """

    def __init__(
        self,
        api: KubeApi,
        cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._cache: ExpiringCache[tuple[str, str], dict[str, str]] = ExpiringCache(
            cache_seconds, clock=clock
        )

    async def __call__(self, namespace: str, pod: str) -> dict[str, str]:
        """The pod's labels (none when the pod is gone)."""
        return await self._cache.get((namespace, pod), lambda: self._read(namespace, pod))

    async def _read(self, namespace: str, pod: str) -> dict[str, str]:
        return labels_of(await self._api.get(namespaced("v1", namespace, "pods", pod)))
