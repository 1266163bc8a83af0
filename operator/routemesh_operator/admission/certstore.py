"""The webhook's certificates, kept in a Secret and trusted through the webhook configuration.

When the operator issues its own certificates (`webhook_certificates: operator`, the default),
the runtime builds one `WebhookCertificates`, calls `ensure()` once before it starts the webhook
server, then spawns `run()` as a named task that checks again every so often and hands a new
serving pair to the server when it changes. With cert-manager the runtime builds none of this:
cert-manager writes the files and its cainjector fills the `caBundle`.

The Secret (type kubernetes.io/tls, in the operator's namespace) holds the serving pair under
`tls.crt`/`tls.key`, the signing CA under `ca.crt`/`ca.key`, and under `ca-bundle.crt` every CA
the webhook configuration must trust. Every replica reads the same Secret, so they all serve the
same certificate; a write is a compare-and-swap on the resourceVersion, and the replica that
loses a race uses what the winner wrote.

Rotation never leaves the API server without a CA for the certificate being served:
- a serving certificate is renewed `rotate_before` its expiry, from the same CA;
- a CA is renewed `rotate_before` its expiry. The new CA first joins the bundle beside the old
  one, and the serving certificate the old CA signed stays in use for one more check; only then
  is a serving certificate issued from the new CA. The old CA leaves the bundle when it expires.
`ensure()` returns a pair only after the webhook configuration trusts it (or does not exist yet).

It writes only that Secret and the `caBundle` of the named MutatingWebhookConfiguration, and
decides nothing about injection. The clock is injected.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from routemesh_operator.admission import certs
from routemesh_operator.admission.certs import KeyPair
from routemesh_operator.kube import ApiError, KubeApi, namespaced
from routemesh_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

WEBHOOKS_API = "admissionregistration.k8s.io/v1"
SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105 (a Secret type, not a password)
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_BUNDLE = "ca-bundle.crt"
CA_COMMON_NAME = "routemesh-webhook-ca"
LABELS = {
    "app.kubernetes.io/managed-by": "routemesh-operator",
    "app.kubernetes.io/component": "webhook-certificates",
}
# Compare-and-swap retries: a lost race is followed by a read that sees the winner's Secret,
# so more than two rounds means something else keeps writing.
_ATTEMPTS = 4


class CertificateConflict(RuntimeError):
    """The Secret or the webhook configuration kept changing under us; try again later."""


def webhook_hosts(service: str, namespace: str, extra: list[str]) -> list[str]:
    """The names the API server may use for the webhook's Service, then any extra hosts."""
    names = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", *extra]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class _State:
    """What the Secret holds; an entry missing or unreadable is None."""

    ca: KeyPair | None
    serving: KeyPair | None
    trusted: bytes  # the caBundle: the signing CA first, then older CAs not yet expired


@dataclass(frozen=True)
class _Planned:
    """What the Secret should hold."""

    ca: KeyPair
    serving: KeyPair
    trusted: bytes

    def differs(self, stored: _State) -> bool:
        return (self.ca, self.serving, self.trusted) != (stored.ca, stored.serving, stored.trusted)


class WebhookCertificates:
    """Issues, stores and rotates the webhook's CA and serving certificate."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        secret_name: str,
        webhook_configuration: str,
        hosts: list[str],
        ca_validity: timedelta,
        serving_validity: timedelta,
        rotate_before: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        owners: Callable[[], list[dict[str, Any]]] = list,
    ) -> None:
        # A certificate that is due as soon as it is issued would be reissued on every check.
        if not timedelta(0) < rotate_before < min(ca_validity, serving_validity):
            raise ValueError("rotate_before must be positive and shorter than both validities")
        if not hosts:
            raise ValueError("the serving certificate needs at least one host")
        self._api = api
        self._namespace = namespace
        self._secret_name = secret_name
        self._secret_path = namespaced("v1", namespace, "secrets", secret_name)
        self._secrets = namespaced("v1", namespace, "secrets")
        self._configuration = webhook_configuration
        self._configuration_path = (
            f"/apis/{WEBHOOKS_API}/mutatingwebhookconfigurations/{webhook_configuration}"
        )
        self.hosts = list(hosts)
        self._ca_validity = ca_validity
        self._serving_validity = serving_validity
        self._rotate_before = rotate_before
        self._clock = clock
        self._owners = owners
        self.current: KeyPair | None = None
        """The serving pair the last successful `ensure()` returned."""
        self.ca_bundle: bytes = b""
        """The CAs the webhook configuration trusts, as of the last successful `ensure()`."""
        self.published = False
        """Whether the last `ensure()` found the webhook configuration (and it trusts the pair)."""

    @classmethod
    def from_settings(
        cls,
        api: KubeApi,
        settings: OperatorSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        owners: Callable[[], list[dict[str, Any]]] = list,
    ) -> WebhookCertificates:
        """The store the operator's settings describe (for `webhook_certificates: operator`)."""
        return cls(
            api,
            namespace=settings.namespace,
            secret_name=settings.webhook_secret,
            webhook_configuration=settings.webhook_configuration,
            hosts=webhook_hosts(
                settings.webhook_service, settings.namespace, settings.webhook_extra_hosts
            ),
            ca_validity=timedelta(days=settings.webhook_ca_validity_days),
            serving_validity=timedelta(days=settings.webhook_serving_validity_days),
            rotate_before=timedelta(days=settings.webhook_rotate_before_days),
            clock=clock,
            owners=owners,
        )

    async def ensure(self) -> KeyPair:
        """The serving pair to use now: the stored one if still good, else a new one.

        Writes the Secret when anything changed, then makes every webhook of the configuration
        trust the bundle. Raises `ApiError` (or a connection error) when either write fails for
        another reason than a lost race, and `CertificateConflict` when races never settle.
        """
        for _ in range(_ATTEMPTS):
            secret = await self._api.get(self._secret_path)
            stored = _read(secret)
            wanted = self._plan(stored, self._clock())
            if wanted.differs(stored) or self._unowned(secret):
                try:
                    await self._write(secret, wanted)
                except ApiError as exc:
                    # 409: another replica wrote first (or created it); 404: it was deleted
                    # meanwhile. Either way, read again and decide on what is there now.
                    if exc.status in (404, 409):
                        logger.info("secret %s changed meanwhile; reading it again", self._name)
                        continue
                    raise
            self.published = await self._publish(wanted.trusted)
            self.current = wanted.serving
            self.ca_bundle = wanted.trusted
            return wanted.serving
        raise CertificateConflict(f"secret {self._name} kept changing during {_ATTEMPTS} attempts")

    async def run(
        self,
        on_rotate: Callable[[KeyPair], None],
        check_every: float,
        *,
        retry_every: float = 5.0,
    ) -> None:
        """Call `ensure()` every `check_every` seconds until cancelled; hand on every new pair.

        `on_rotate(pair)` is called when the serving pair differs from the one the caller last
        received (from its own `ensure()` before the loop, or from an earlier `on_rotate`).
        Failures are logged, never raised; after one, or while the webhook configuration is
        missing, the next check comes after `retry_every` seconds instead (at most
        `check_every`), so that a chart that installs the configuration after the operator
        starts gets its caBundle soon.
        """
        delivered = self.current
        while True:
            settled = False
            try:
                pair = await self.ensure()
                if pair != delivered:
                    on_rotate(pair)
                    delivered = pair
                    logger.info("webhook serving certificate in use until %s", _expiry(pair))
                settled = self.published
            except asyncio.CancelledError:
                raise
            except Exception:
                # A long-lived loop: whatever went wrong (API server away, a refused write, a
                # callback that failed), the certificate in use stays and the next check retries.
                logger.exception("webhook certificates: check failed; retrying")
            await asyncio.sleep(check_every if settled else min(retry_every, check_every))

    # ------------------------------------------------------------------ deciding

    def _plan(self, stored: _State, now: datetime) -> _Planned:
        """What the Secret should hold at `now`, reusing whatever is still good."""
        ca = stored.ca
        trusted = certs.unexpired(stored.trusted, now)
        ca_changed = False
        if ca is None or not certs.matches(ca) or self._due(ca.cert_pem, now):
            previous = ca.cert_pem if ca is not None else b""
            ca = certs.issue_ca(CA_COMMON_NAME, now, self._ca_validity)
            # Keep trusting the old CA until it expires: its serving certificate may still be
            # in use here or by another replica, or by a connection the API server holds open.
            trusted = certs.bundle(ca.cert_pem, trusted, certs.unexpired(previous, now))
            ca_changed = True
            logger.info("issued a new webhook CA, valid until %s", _expiry(ca))
        else:
            trusted = certs.bundle(ca.cert_pem, trusted)
        serving = stored.serving
        if serving is not None and self._keeps(serving, ca, ca_changed, stored, now):
            return _Planned(ca, serving, trusted)
        serving = certs.issue_serving(ca, self.hosts, now, self._serving_validity)
        logger.info(
            "issued a webhook serving certificate for %s, valid until %s",
            ", ".join(self.hosts),
            _expiry(serving),
        )
        return _Planned(ca, serving, trusted)

    def _keeps(
        self, serving: KeyPair, ca: KeyPair, ca_changed: bool, stored: _State, now: datetime
    ) -> bool:
        """Whether the stored serving pair may stay in use."""
        if not (
            certs.matches(serving)
            and certs.covers(serving.cert_pem, self.hosts)
            and certs.not_before(serving.cert_pem) <= now
        ):
            return False
        if ca_changed:
            # The CA changed in this very check: keep serving what the old CA signed, still
            # valid, until the API server has had the new CA in its bundle for one check.
            return (
                stored.ca is not None
                and certs.signed_by(serving.cert_pem, stored.ca.cert_pem)
                and now < certs.not_after(serving.cert_pem)
            )
        return certs.signed_by(serving.cert_pem, ca.cert_pem) and not self._due(
            serving.cert_pem, now
        )

    def _due(self, cert_pem: bytes, now: datetime) -> bool:
        return certs.due(cert_pem, now, self._rotate_before)

    # ------------------------------------------------------------------ writing

    def _unowned(self, secret: dict[str, Any] | None) -> bool:
        """Whether a stored Secret lacks an owner it should have (one written before 0.2.0)."""
        owners = self._owners()
        present = (secret or {}).get("metadata", {}).get("ownerReferences") or []
        uids = {o.get("uid") for o in present}
        return secret is not None and any(o["uid"] not in uids for o in owners)

    @property
    def _name(self) -> str:
        return f"{self._namespace}/{self._secret_name}"

    async def _write(self, secret: dict[str, Any] | None, state: _Planned) -> None:
        data = {
            TLS_CERT: state.serving.cert_pem,
            TLS_KEY: state.serving.key_pem,
            CA_CERT: state.ca.cert_pem,
            CA_KEY: state.ca.key_pem,
            CA_BUNDLE: state.trusted,
        }
        encoded = {key: base64.b64encode(value).decode("ascii") for key, value in data.items()}
        if secret is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": SECRET_TYPE,
                "metadata": {
                    "name": self._secret_name,
                    "labels": LABELS,
                    "ownerReferences": self._owners(),
                },
                "data": encoded,
            }
            await self._api.create(self._secrets, body)
            logger.info("created secret %s", self._name)
            return
        # Replace, keeping the metadata (labels, annotations, owner) and the type others gave
        # it: the type of a Secret cannot change. The resourceVersion makes it a compare-and-swap.
        metadata = dict(secret.get("metadata") or {})
        metadata.pop("managedFields", None)
        metadata["ownerReferences"] = _merged(metadata.get("ownerReferences") or [], self._owners())
        body = {**secret, "metadata": metadata, "data": {**secret.get("data", {}), **encoded}}
        body.pop("stringData", None)
        await self._api.request("PUT", self._secret_path, body)
        logger.info("updated secret %s", self._name)

    async def _publish(self, trusted: bytes) -> bool:
        """Make every webhook of the configuration trust `trusted`; False if it does not exist."""
        encoded = base64.b64encode(trusted).decode("ascii")
        for _ in range(_ATTEMPTS):
            configuration = await self._api.get(self._configuration_path)
            if configuration is None:
                # The chart may install it after the operator starts: try again next check.
                logger.warning(
                    "mutatingwebhookconfiguration %s not found; its caBundle is set once it exists",
                    self._configuration,
                )
                return False
            webhooks: list[dict[str, Any]] = list(configuration.get("webhooks") or [])
            if all(_ca_bundle(webhook) == encoded for webhook in webhooks):
                return True
            patched = [
                {
                    **webhook,
                    "clientConfig": {**webhook.get("clientConfig", {}), "caBundle": encoded},
                }
                for webhook in webhooks
            ]
            # A merge patch replaces the whole list, so it carries the resourceVersion it was
            # built from: a webhook added meanwhile makes it fail (409) instead of vanishing.
            body = {
                "metadata": {"resourceVersion": configuration["metadata"]["resourceVersion"]},
                "webhooks": patched,
            }
            try:
                await self._api.merge_patch(self._configuration_path, body)
            except ApiError as exc:
                if exc.status == 409:
                    continue
                raise
            logger.info("set the caBundle of %d webhooks in %s", len(patched), self._configuration)
            return True
        raise CertificateConflict(
            f"mutatingwebhookconfiguration {self._configuration} kept changing"
        )


def write_files(pair: KeyPair, directory: Path | str) -> tuple[Path, Path]:
    """Write `tls.crt` and `tls.key` into `directory`, each atomically; return their paths.

    The names are those of a kubernetes.io/tls Secret mounted as a volume (cert-manager's), so
    the webhook server loads the same paths whoever issued the certificate. The key is readable
    by its owner only. Each file is replaced by a rename, so a reader never sees half a file.
    """
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = _write_atomically(folder / TLS_KEY, pair.key_pem, 0o600)
    cert_path = _write_atomically(folder / TLS_CERT, pair.cert_pem, 0o644)
    return cert_path, key_path


def _write_atomically(path: Path, content: bytes, mode: int) -> Path:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _merged(present: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The owners already there (others may have added theirs), plus the wanted ones missing."""
    uids = {o.get("uid") for o in present}
    return [*present, *(o for o in wanted if o["uid"] not in uids)]


def _read(secret: dict[str, Any] | None) -> _State:
    """What a Secret holds; a missing, partial or unreadable entry counts as absent."""
    if secret is None:
        return _State(None, None, b"")
    data: dict[str, str] = secret.get("data") or {}

    def entry(key: str) -> bytes | None:
        try:
            return base64.b64decode(data[key], validate=True) if data.get(key) else None
        except ValueError:
            return None

    def pair(cert_key: str, key_key: str) -> KeyPair | None:
        cert, key = entry(cert_key), entry(key_key)
        if cert is None or key is None:
            return None
        found = KeyPair(cert, key)
        try:  # parse once here, so that nothing later trips over a damaged entry
            certs.not_after(cert)
            certs.matches(found)
        except (ValueError, TypeError):
            return None
        return found

    try:
        trusted = certs.bundle(entry(CA_BUNDLE) or b"")
    except ValueError:
        trusted = b""
    return _State(pair(CA_CERT, CA_KEY), pair(TLS_CERT, TLS_KEY), trusted)


def _ca_bundle(webhook: dict[str, Any]) -> str | None:
    bundle: str | None = (webhook.get("clientConfig") or {}).get("caBundle")
    return bundle


def _expiry(pair: KeyPair) -> str:
    return certs.not_after(pair.cert_pem).isoformat()
