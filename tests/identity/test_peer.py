"""peer_identity: first URI SAN of a certificate, given parsed, DER or PEM."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from outrelay.identity import (
    Identity,
    IdentityError,
    InvalidScheme,
    NoPeerIdentity,
    peer_identity,
    peer_uri,
)

AGENT = Identity.agent("acme", "00000000-0000-0000-0000-000000000001")


def _cert(sans: list[x509.GeneralName] | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_first_uri_san_wins_in_every_encoding() -> None:
    cert = _cert(
        [
            x509.DNSName("localhost"),
            x509.UniformResourceIdentifier(str(AGENT)),
            x509.UniformResourceIdentifier("outrelay://acme/relay/r1"),
        ]
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    der = cert.public_bytes(serialization.Encoding.DER)
    for form in (cert, pem, pem.decode(), der):
        assert peer_identity(form) == AGENT
    assert peer_uri(der) == str(AGENT)


@pytest.mark.parametrize("cert", [None, b"", ""])
def test_no_certificate(cert: bytes | str | None) -> None:
    with pytest.raises(NoPeerIdentity, match="no certificate"):
        peer_identity(cert)


def test_no_san_or_no_uri_san() -> None:
    with pytest.raises(NoPeerIdentity, match="no SAN"):
        peer_identity(_cert(None))
    with pytest.raises(NoPeerIdentity, match="no URI SAN"):
        peer_identity(_cert([x509.DNSName("localhost")]))


def test_garbage_and_non_outrelay_uri() -> None:
    with pytest.raises(NoPeerIdentity, match="does not parse"):
        peer_identity(b"\x30\x03junk")
    with pytest.raises(InvalidScheme):
        peer_identity(_cert([x509.UniformResourceIdentifier("spiffe://acme/x")]))
    assert issubclass(NoPeerIdentity, IdentityError)
