"""The webhook's certificates: issuing, the chain, SANs, due dates, the CA cap and bundles."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from routemesh_operator.admission import certs
from routemesh_operator.admission.certstore import WebhookCertificates, webhook_hosts, write_files

NOW = datetime(2030, 1, 1, tzinfo=UTC)
HOSTS = ["routemesh-operator", "routemesh-operator.routemesh-system.svc", "127.0.0.1"]


@pytest.fixture(scope="module")
def ca() -> certs.KeyPair:
    return certs.issue_ca("test-ca", NOW, timedelta(days=100))


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_the_ca_is_a_ca(ca):
    cert = load(ca.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.ca
    assert usage.key_cert_sign
    assert cert.subject == cert.issuer
    assert certs.matches(ca)
    assert certs.not_after(ca.cert_pem) == NOW + timedelta(days=100)


def test_the_serving_certificate_is_signed_by_the_ca(ca):
    serving = certs.issue_serving(ca, HOSTS, NOW, timedelta(days=10))
    cert, ca_cert = load(serving.cert_pem), load(ca.cert_pem)
    # The signature, checked with the CA's public key itself.
    public_key = ca_cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    public_key.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    assert cert.issuer == ca_cert.subject
    assert certs.signed_by(serving.cert_pem, ca.cert_pem)
    assert certs.matches(serving)
    other = certs.issue_ca("other", NOW, timedelta(days=100))
    assert not certs.signed_by(serving.cert_pem, other.cert_pem)
    assert not certs.matches(certs.KeyPair(serving.cert_pem, other.key_pem))
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_hosts_become_dns_and_ip_sans(ca):
    serving = certs.issue_serving(ca, [*HOSTS, "::1", "127.0.0.1"], NOW, timedelta(days=10))
    sans = load(serving.cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == HOSTS[:2]
    assert sans.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert certs.hosts_of(serving.cert_pem) == {*HOSTS, "::1"}
    assert certs.covers(serving.cert_pem, ["127.0.0.1", "routemesh-operator"])
    assert certs.covers(serving.cert_pem, ["0:0:0:0:0:0:0:1"])  # the same IP, written out
    assert not certs.covers(serving.cert_pem, ["routemesh-operator.other.svc"])
    with pytest.raises(ValueError, match="host"):
        certs.issue_serving(ca, [], NOW, timedelta(days=10))


def test_validity_is_backdated_and_capped_at_the_ca_expiry(ca):
    serving = certs.issue_serving(ca, HOSTS, NOW, timedelta(days=10))
    assert certs.not_before(serving.cert_pem) == NOW - certs.BACKDATE
    assert certs.not_after(serving.cert_pem) == NOW + timedelta(days=10)
    late = NOW + timedelta(days=95)
    capped = certs.issue_serving(ca, HOSTS, late, timedelta(days=10))
    assert certs.not_after(capped.cert_pem) == certs.not_after(ca.cert_pem)


def test_due_is_rotate_before_the_expiry(ca):
    serving = certs.issue_serving(ca, HOSTS, NOW, timedelta(days=10))
    week = timedelta(days=7)
    assert not certs.due(serving.cert_pem, NOW, week)
    assert not certs.due(serving.cert_pem, NOW + timedelta(days=2, hours=23), week)
    assert certs.due(serving.cert_pem, NOW + timedelta(days=3), week)
    assert certs.due(serving.cert_pem, NOW + timedelta(days=11), week)  # expired


def test_bundle_joins_without_repeats_and_drops_the_expired(ca):
    short = certs.issue_ca("short", NOW, timedelta(days=1))
    joined = certs.bundle(ca.cert_pem, short.cert_pem, ca.cert_pem)
    assert certs.split(joined) == [ca.cert_pem, short.cert_pem]
    assert certs.bundle(joined, short.cert_pem) == joined
    assert [c.subject for c in x509.load_pem_x509_certificates(joined)] == [
        load(ca.cert_pem).subject,
        load(short.cert_pem).subject,
    ]
    assert certs.bundle() == b""
    assert certs.unexpired(joined, NOW + timedelta(days=2)) == ca.cert_pem


def test_webhook_hosts_name_the_service_three_ways():
    assert webhook_hosts("op", "ns", ["127.0.0.1", "op"]) == [
        "op",
        "op.ns",
        "op.ns.svc",
        "127.0.0.1",
    ]


def test_write_files_writes_both_with_a_private_key(tmp_path, ca):
    serving = certs.issue_serving(ca, HOSTS, NOW, timedelta(days=10))
    cert_path, key_path = write_files(serving, tmp_path / "certs")
    assert cert_path.read_bytes() == serving.cert_pem
    assert key_path.read_bytes() == serving.key_pem
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    again = certs.issue_serving(ca, HOSTS, NOW, timedelta(days=10))
    assert write_files(again, tmp_path / "certs") == (cert_path, key_path)
    assert cert_path.read_bytes() == again.cert_pem
    assert sorted(p.name for p in cert_path.parent.iterdir()) == ["tls.crt", "tls.key"]


def test_rotate_before_must_be_shorter_than_the_lifetimes():
    with pytest.raises(ValueError, match="rotate_before"):
        WebhookCertificates(
            None,  # type: ignore[arg-type]  # refused before the client is used
            namespace="ns",
            secret_name="s",
            webhook_configuration="c",
            hosts=HOSTS,
            ca_validity=timedelta(days=100),
            serving_validity=timedelta(days=10),
            rotate_before=timedelta(days=10),
        )
