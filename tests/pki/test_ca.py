"""Mini-CA: certificate profiles checked field by field, CSR rejection cases."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from outrelay.identity import Identity, peer_identity
from outrelay.pki import (
    CA,
    CAError,
    CSRError,
    CSRKeyError,
    CSRMissingURI,
    CSRParseError,
    CSRSignatureError,
    CSRURIMismatch,
    key_pem,
    make_csr,
)

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
AGENT = Identity.agent("acme", "00000000-0000-0000-0000-000000000001")


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.create(now=NOW)


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    uris: list[str],
    *,
    extra: list[x509.GeneralName] | None = None,
    subject: str = "whatever",
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += extra or []
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algo).public_bytes(serialization.Encoding.PEM)


def test_ca_profile(ca: CA) -> None:
    cert = ca.cert
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=outrelay-ca"
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert 0 < cert.serial_number < 2**128
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=1)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(hours=87600)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.digital_signature
    assert not (ku.value.crl_sign or ku.value.key_encipherment)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())
    for absent in (x509.ExtendedKeyUsage, x509.SubjectAlternativeName):
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(absent)
    cert.verify_directly_issued_by(cert)
    assert ca.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert ca.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8


def test_leaf_profile(ca: CA) -> None:
    key, csr = make_csr(AGENT)
    # the CSR's subject and other SANs are ignored
    csr = _csr(key, ["outrelay://x/relay/other", str(AGENT)], extra=[x509.DNSName("evil.example")])
    cert = ca.sign(
        csr,
        AGENT,
        dt.timedelta(hours=2),
        dns_names=["relay.example"],
        ip_addresses=["127.0.0.1", ipaddress.ip_address("::1")],
        now=NOW,
    )
    cert = x509.load_pem_x509_certificate(cert.public_bytes(serialization.Encoding.PEM))
    assert cert.subject.rfc4514_string() == f"CN={AGENT}"
    assert cert.issuer == ca.cert.subject
    assert cert.public_key() == key.public_key()
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    cert.verify_directly_issued_by(ca.cert)
    assert 0 < cert.serial_number < 2**128
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=1)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(hours=2)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.content_commitment)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(AGENT)]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "relay.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.BasicConstraints)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert peer_identity(cert) == AGENT


def test_leaf_defaults(ca: CA) -> None:
    _, csr = make_csr(AGENT)
    for ttl in (None, dt.timedelta(0), dt.timedelta(seconds=-5)):
        cert = ca.sign(csr, AGENT, ttl, now=NOW)
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(minutes=61)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        assert san.get_values_for_type(x509.IPAddress) == []
    # never outlives the CA
    cert = ca.sign(csr, AGENT, dt.timedelta(days=365 * 20), now=NOW)
    assert cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_make_csr_shape() -> None:
    key, pem = make_csr(AGENT)
    csr = x509.load_pem_x509_csr(pem)
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == f"CN={AGENT}"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(AGENT)]
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_csr_accepts_der_and_other_key_types(ca: CA) -> None:
    key, pem = make_csr(AGENT)
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert ca.sign(der, AGENT).public_key() == key.public_key()
    ed = ed25519.Ed25519PrivateKey.generate()
    assert ca.sign(_csr(ed, [str(AGENT)]), AGENT).public_key() == ed.public_key()


def _tamper(pem: bytes) -> bytes:
    csr = x509.load_pem_x509_csr(pem)
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # flip a bit of the signature
    return bytes(der)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: b"not a csr", CSRParseError, "pki: parse csr"),
        (
            lambda: (
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            ),
            CSRParseError,
            "pki: parse csr",
        ),
        (lambda: _tamper(make_csr(AGENT)[1]), CSRSignatureError, "signature invalid"),
        (lambda: _csr(ec.generate_private_key(ec.SECP256R1()), []), CSRMissingURI, "missing"),
        (
            lambda: _csr(ec.generate_private_key(ec.SECP256R1()), [], extra=[x509.DNSName("a")]),
            CSRMissingURI,
            "missing",
        ),
        (
            lambda: make_csr(Identity.agent("acme", "00000000-0000-0000-0000-000000000002"))[1],
            CSRURIMismatch,
            "does not match",
        ),
        # a non-canonical spelling of the same agent is not the issued name
        (
            lambda: _csr(
                ec.generate_private_key(ec.SECP256R1()),
                ["outrelay://acme/agent/00000000000000000000000000000001"],
            ),
            CSRURIMismatch,
            "does not match",
        ),
        (lambda: _csr(ec.generate_private_key(ec.SECP192R1()), [str(AGENT)]), CSRKeyError, "curve"),
        (
            lambda: _csr(rsa.generate_private_key(65537, 1024), [str(AGENT)]),
            CSRKeyError,
            "too small",
        ),
    ],
)
def test_csr_rejections(ca: CA, make: object, error: type[CSRError], match: str) -> None:
    assert callable(make)
    with pytest.raises(error, match=match):
        ca.sign(make(), AGENT)


def test_save_and_load(ca: CA, tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    target = tmp_path / "ca"
    ca.save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert stat.S_IMODE((target / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "ca.crt").stat().st_mode) == 0o644
    loaded = CA.load(target)
    assert loaded.cert == ca.cert and loaded.key_pem == ca.key_pem
    with pytest.raises(FileExistsError):
        ca.save(target)
    other = CA.create()
    other.save(target, overwrite=True)
    assert CA.load(target).cert == other.cert
    (target / "ca.key").write_bytes(ca.key_pem)  # key of another CA
    with pytest.raises(CAError, match="does not match"):
        CA.load(target)
    with pytest.raises(CAError, match="No such file"):
        CA.load(tmp_path / "missing")
    leaf_key, leaf = ca.issue(AGENT)
    with pytest.raises(CAError, match="not a CA"):
        CA.from_pem(leaf.public_bytes(serialization.Encoding.PEM), key_pem(leaf_key))


def test_server_certificate(ca: CA) -> None:
    key, cert = ca.issue_server(dns_names=["ctl.example"], ip_addresses=["127.0.0.1"], now=NOW)
    cert.verify_directly_issued_by(ca.cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "ctl.example"]
