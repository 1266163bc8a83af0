"""Certificates for the control plane and for webhooks."""

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from routemesh_testing.pki import CertificateAuthority


def test_serving_certificate_has_ip_and_dns_sans_and_is_signed_by_the_ca():
    ca = CertificateAuthority("test-ca")
    pair = ca.issue_serving("svc", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]

    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)


def test_client_certificate_carries_user_and_groups():
    cert = x509.load_pem_x509_certificate(
        CertificateAuthority("ca").issue_client("admin", groups=("system:masters",)).cert_pem
    )
    subject = cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "admin"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
