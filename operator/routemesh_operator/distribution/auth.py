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

from routemesh_operator.kube import KubeApi, namespaced

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
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, Identity | None]] = {}

    async def authenticate(self, token: str) -> Identity:
        """The identity behind a bearer token, or `Unauthenticated`."""
        if not token:
            raise Unauthenticated("no bearer token")
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            identity = cached[1]
        else:
            identity = await self._review(token)
            self._cache[key] = (now + self._cache_seconds, identity)
            self._drop_expired(now)
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

    def _drop_expired(self, now: float) -> None:
        if len(self._cache) > 4096:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}


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
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}

    async def __call__(self, namespace: str, pod: str) -> dict[str, str]:
        """The pod's labels (none when the pod is gone)."""
        now = self._clock()
        cached = self._cache.get((namespace, pod))
        if cached is not None and cached[0] > now:
            return cached[1]
        body = await self._api.get(namespaced("v1", namespace, "pods", pod))
        labels = {
            str(k): str(v)
            for k, v in ((body or {}).get("metadata", {}).get("labels") or {}).items()
        }
        if len(self._cache) > 8192:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[(namespace, pod)] = (now + self._cache_seconds, labels)
        return labels
