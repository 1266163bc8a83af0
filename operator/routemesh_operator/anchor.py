"""The owner of what the operator creates outside any RoutingPolicy or ModelBackend.

The webhook's certificate Secret, the leader Lease and the `routemesh-ca` ConfigMaps are written
by the operator at run time, so helm never sees them and `helm uninstall` alone would leave them
behind. Each one carries an ownerReference to the chart's MutatingWebhookConfiguration: it is
cluster-scoped (so it may own objects in every namespace), it is the one chart object the
operator already knows by name, and helm deletes it first. The garbage collector then deletes
what it owns.

The runtime creates one `Anchor`, runs `follow` as a named background task, and hands
`references` to the writers (certificate store, leader election, reconciler). Without the
configuration (a standalone run, or before the chart created it) `references` is empty and the
objects are written unowned, as before; the loop keeps looking, and reads the uid again every
10 s, so a configuration deleted and created again is pointed at by a stale uid (whose objects
the collector deletes, and the operator writes again) for 10 s at most. It only reads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from routemesh_operator.kube import ApiError, KubeApi

logger = logging.getLogger(__name__)

WEBHOOKS_API = "admissionregistration.k8s.io/v1"


class Anchor:
    """The ownerReference to the webhook configuration, once it has been read."""

    def __init__(self, api: KubeApi, configuration: str) -> None:
        self._api = api
        self._configuration = configuration
        self._path = f"/apis/{WEBHOOKS_API}/mutatingwebhookconfigurations/{configuration}"
        self._reference: dict[str, Any] | None = None

    def references(self) -> list[dict[str, Any]]:
        """The ownerReferences to put on an object the operator creates (maybe none)."""
        return [dict(self._reference)] if self._reference is not None else []

    async def refresh(self) -> None:
        """Read the configuration's uid again; forget it when the configuration is gone."""
        found = await self._api.get(self._path)
        uid = ((found or {}).get("metadata") or {}).get("uid")
        if uid is None:
            if self._reference is not None:
                logger.warning("%s is gone; new objects are written unowned", self._configuration)
            self._reference = None
            return
        if self._reference is None or self._reference["uid"] != uid:
            logger.info("objects the operator creates are owned by %s", self._configuration)
        self._reference = {
            "apiVersion": WEBHOOKS_API,
            "kind": "MutatingWebhookConfiguration",
            "name": self._configuration,
            "uid": uid,
            # Owned, not controlled: the configuration does not reconcile them.
            "blockOwnerDeletion": False,
        }

    async def follow(self, every: float = 10.0) -> None:
        """Refresh every `every` seconds until cancelled; failures are logged and retried."""
        while True:
            try:
                await self.refresh()
            except (ApiError, OSError, TimeoutError) as exc:
                logger.warning("cannot read %s: %s", self._configuration, exc)
            await asyncio.sleep(every)
