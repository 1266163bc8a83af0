"""Serve the webhook over TLS, with certificates that change under it.

The runtime spawns `serve_webhook` as one named task. With `webhook_certificates: operator` it
gets a serving pair from `WebhookCertificates` (retrying until the Secret and the webhook
configuration can be written), starts the TLS server, and then keeps the certificates fresh: a
rotated pair is loaded into the same SSL context, so new connections get it and open ones finish
on the old one. With cert-manager it serves the files cert-manager mounts and reloads them when
they change. A webhook that cannot start never stops the rest of the operator; it logs and
retries.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from routemesh_operator.admission.certs import KeyPair
from routemesh_operator.admission.certstore import WebhookCertificates, write_files
from routemesh_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

RETRY_SECONDS = 5.0


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context (1.2 or newer) with the given pair loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def serve_webhook(
    app: web.Application,
    settings: OperatorSettings,
    certificates: WebhookCertificates | None,
    on_listening: Callable[[int], None] = lambda port: None,
    with_context: Callable[[ssl.SSLContext], Awaitable[None]] | None = None,
) -> None:
    """Run the webhook server until cancelled (see the module docstring).

    `with_context` is awaited with the server's SSL context once the webhook listens: the
    distribution server, when it serves TLS, shares the certificate (and its rotations).
    """
    directory = Path(settings.webhook_cert_dir)
    if certificates is not None:
        pair = await _first_pair(certificates)
        cert, key = write_files(pair, directory)
    else:
        cert, key = directory / "tls.crt", directory / "tls.key"
        await _wait_for_files(cert, key)
    context = server_context(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, settings.webhook_host, settings.webhook_port, ssl_context=context
        )
        await site.start()
        sockets = getattr(site._server, "sockets", None) or ()  # the bound port, for tests
        port = sockets[0].getsockname()[1] if sockets else settings.webhook_port
        logger.info("sidecar injection webhook listening on port %s (TLS)", port)
        on_listening(port)
        if with_context is not None:
            await with_context(context)
        if certificates is not None:
            await certificates.run(
                lambda pair: _reload(context, pair, directory),
                check_every=_check_every(settings),
            )
        else:
            await _follow_files(context, cert, key)
    finally:
        await runner.cleanup()


async def _first_pair(certificates: WebhookCertificates) -> KeyPair:
    while True:
        try:
            return await certificates.ensure()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("webhook certificates not ready; retrying in %ss", RETRY_SECONDS)
            await asyncio.sleep(RETRY_SECONDS)


def _reload(context: ssl.SSLContext, pair: KeyPair, directory: Path) -> None:
    cert, key = write_files(pair, directory)
    context.load_cert_chain(cert, key)
    logger.info("webhook certificate rotated")


def _check_every(settings: OperatorSettings) -> float:
    # Check a few times within the rotation window, and at least every 30 s: a check is two
    # reads, and it is what gives the caBundle back to webhook entries that a `helm upgrade`
    # or a hand edit replaced.
    window = settings.webhook_rotate_before_days * 86400
    return max(1.0, min(30.0, window / 4))


def _mtime(path: Path) -> int | None:
    try:
        return path.resolve().stat().st_mtime_ns
    except OSError:
        return None


async def _wait_for_files(cert: Path, key: Path) -> None:
    while _mtime(cert) is None or _mtime(key) is None:
        logger.warning("waiting for cert-manager's certificate at %s", cert)
        await asyncio.sleep(RETRY_SECONDS)


async def _follow_files(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    seen = _mtime(cert)
    while True:
        await asyncio.sleep(60)
        try:
            current = _mtime(cert)
            if current is not None and current != seen:
                context.load_cert_chain(cert, key)
                seen = current
                logger.info("webhook certificate reloaded from %s", cert)
        except (OSError, ssl.SSLError) as exc:
            logger.warning("cannot reload the webhook certificate: %s", exc)
