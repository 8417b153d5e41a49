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

from outrelay.identity import CONTROLLER_NAME, Identity, Role, peer_identity
from outrelay.pki import (
    CA,
    CAError,
    CSRError,
    CSRKeyError,
    CSRMissingURI,
    CSRParseError,
    CSRSignatureError,
    CSRURIMismatch,
    LeafProfileError,
    ReservedName,
    key_pem,
    make_csr,
)

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
AGENT = Identity.agent("acme", "00000000-0000-0000-0000-000000000001")
RELAY = Identity.relay("acme", "r1")
ADMIN = Identity.admin("acme", "ops")
CLIENT_ONLY = [ExtendedKeyUsageOID.CLIENT_AUTH]
SERVER_AND_CLIENT = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


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
    """A relay leaf, field by field: serverAuth+clientAuth, localhost then the given names."""
    key, csr = make_csr(RELAY)
    # the CSR's subject and other SANs are ignored
    csr = _csr(key, ["outrelay://x/relay/other", str(RELAY)], extra=[x509.DNSName("evil.example")])
    cert = ca.sign(
        csr,
        RELAY,
        dt.timedelta(hours=2),
        dns_names=["relay.example"],
        ip_addresses=["127.0.0.1", ipaddress.ip_address("::1")],
        now=NOW,
    )
    cert = x509.load_pem_x509_certificate(cert.public_bytes(serialization.Encoding.PEM))
    assert cert.subject.rfc4514_string() == f"CN={RELAY}"
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
    assert list(eku) == SERVER_AND_CLIENT
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(RELAY)]
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
    assert peer_identity(cert) == RELAY


def _usages_and_names(cert: x509.Certificate) -> tuple[list[x509.ObjectIdentifier], list[str]]:
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    hosts += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return list(eku), hosts


def test_agent_leaf_is_client_only_without_host_names(ca: CA) -> None:
    """Finding 1: an agent leaf cannot serve TLS (no serverAuth) nor pass for localhost."""
    _, cert = ca.issue(AGENT, now=NOW)
    assert _usages_and_names(cert) == (CLIENT_ONLY, [])
    assert peer_identity(cert) == AGENT


def test_agent_leaf_server_auth_is_an_explicit_opt_in(ca: CA) -> None:
    _, cert = ca.issue(AGENT, dns_names=["p2p.example"], server_auth=True, now=NOW)
    assert _usages_and_names(cert) == (SERVER_AND_CLIENT, ["p2p.example"])
    _, bare = ca.issue(AGENT, server_auth=True, now=NOW)
    assert _usages_and_names(bare) == (SERVER_AND_CLIENT, [])  # no blanket localhost


def test_admin_leaf_is_client_only(ca: CA) -> None:
    _, cert = ca.issue(ADMIN, now=NOW)
    assert _usages_and_names(cert) == (CLIENT_ONLY, [])


@pytest.mark.parametrize(
    ("identity", "kwargs", "match"),
    [
        (AGENT, {"dns_names": ["a.example"]}, "an agent leaf .* unless issued with --server-auth"),
        (AGENT, {"ip_addresses": ["127.0.0.1"]}, "client-only and carries no DNS/IP SAN"),
        (ADMIN, {"dns_names": ["a.example"]}, "an admin leaf .* client-only"),
        (ADMIN, {"server_auth": True}, r"an admin leaf .* \(no serverAuth\)"),
    ],
)
def test_leaf_profile_refusals(
    ca: CA, identity: Identity, kwargs: dict[str, object], match: str
) -> None:
    _, csr = make_csr(identity)
    with pytest.raises(LeafProfileError, match=match):
        ca.sign(csr, identity, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("identity", [AGENT, RELAY, ADMIN], ids=str)
@pytest.mark.parametrize(
    "name", ["controller.outrelay.invalid", "CONTROLLER.outrelay.invalid.", "x.outrelay.invalid"]
)
def test_reserved_role_names_are_refused_in_any_leaf(ca: CA, identity: Identity, name: str) -> None:
    _, csr = make_csr(identity)
    with pytest.raises(ReservedName, match="reserved: names under outrelay.invalid are roles"):
        ca.sign(csr, identity, dns_names=[name], server_auth=identity.role is not Role.ADMIN)


def test_leaf_defaults(ca: CA) -> None:
    _, csr = make_csr(AGENT)
    for ttl in (None, dt.timedelta(0), dt.timedelta(seconds=-5)):
        cert = ca.sign(csr, AGENT, ttl, now=NOW)
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(minutes=61)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == []
        assert san.get_values_for_type(x509.IPAddress) == []
    _, relay_csr = make_csr(RELAY)
    relay = ca.sign(relay_csr, RELAY, now=NOW)
    assert _usages_and_names(relay) == (SERVER_AND_CLIENT, ["localhost"])
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
    # the controller's role name first: every gRPC client of the controller checks it
    assert san.get_values_for_type(x509.DNSName) == [CONTROLLER_NAME, "localhost", "ctl.example"]
    with pytest.raises(ReservedName):
        ca.issue_server(dns_names=["relay.outrelay.invalid"])
