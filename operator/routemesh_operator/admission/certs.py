"""Issuing and reading the webhook's certificates: a CA and a TLS serving certificate it signs.

The kube-apiserver calls the injection webhook over TLS and verifies it against the `caBundle`
of the webhook configuration, so the operator runs a small CA of its own (unless cert-manager
provides the certificate). `certstore.WebhookCertificates` calls these functions to issue, check
and rotate; the tests call them directly.

Everything here is pure: PEM bytes in, PEM bytes out, with the time passed in. It does no I/O,
reads no clock and keeps no state.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Backdate every certificate a little: the API server's clock and ours may differ by a few
# seconds, and a certificate valid only "from now" can be refused by a check that runs earlier.
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both as PEM bytes."""

    cert_pem: bytes
    key_pem: bytes


def issue_ca(common_name: str, now: datetime, validity: timedelta) -> KeyPair:
    """A self-signed CA certificate (EC P-256) valid from `now` for `validity`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key.public_key(), now, now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def issue_serving(ca: KeyPair, hosts: list[str], now: datetime, validity: timedelta) -> KeyPair:
    """A TLS serving certificate for `hosts`, signed by `ca`, never outliving the CA.

    A host that parses as an IP address becomes an IP SAN, any other a DNS SAN: Go's TLS client
    (the API server's) ignores the common name, so the SANs are all that count.
    """
    if not hosts:
        raise ValueError("a serving certificate needs at least one host")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key must be an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    expires = min(now + validity, ca_cert.not_valid_after_utc)
    cert = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
            ca_cert.subject,
            key.public_key(),
            now,
            expires,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def not_after(cert_pem: bytes) -> datetime:
    """When the (first) certificate in `cert_pem` expires, in UTC."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def not_before(cert_pem: bytes) -> datetime:
    """When the (first) certificate in `cert_pem` starts to be valid, in UTC."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_before_utc


def due(cert_pem: bytes, now: datetime, rotate_before: timedelta) -> bool:
    """Whether the certificate expires within `rotate_before` of `now` (or already has)."""
    return now >= not_after(cert_pem) - rotate_before


def bundle(*ca_pems: bytes) -> bytes:
    """One PEM bundle of the given certificates (each may itself be a bundle), without repeats."""
    seen: list[bytes] = []
    for pem in ca_pems:
        for cert in split(pem):
            if cert not in seen:
                seen.append(cert)
    return b"".join(seen)


def split(pem: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each normalised to its canonical PEM form."""
    if not pem.strip():
        return []
    return [
        c.public_bytes(serialization.Encoding.PEM) for c in x509.load_pem_x509_certificates(pem)
    ]


def unexpired(pem: bytes, now: datetime) -> bytes:
    """The bundle `pem` without the certificates that have expired by `now`."""
    return bundle(*(cert for cert in split(pem) if not_after(cert) > now))


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether `ca_pem` issued `cert_pem` (checked by the signature, not just the names)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def matches(pair: KeyPair) -> bool:
    """Whether the private key belongs to the certificate."""
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        cert.public_key().public_bytes(serialization.Encoding.PEM, spki)
        == key.public_key().public_bytes(serialization.Encoding.PEM, spki)
    )


def hosts_of(cert_pem: bytes) -> set[str]:
    """The DNS names and IP addresses (as text) the certificate's SANs name."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = set(sans.get_values_for_type(x509.DNSName))
    return names | {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def covers(cert_pem: bytes, hosts: Iterable[str]) -> bool:
    """Whether the certificate names every one of `hosts` in its SANs."""
    return {_canonical(host) for host in hosts} <= hosts_of(cert_pem)


def _canonical(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # keep order, drop repeats
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    expires: datetime,
) -> x509.CertificateBuilder:
    start = now.astimezone(UTC) - BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(expires.astimezone(UTC))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
