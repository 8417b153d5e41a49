"""The identity of a TLS peer: the first URI SAN of its verified leaf."""

from __future__ import annotations

from cryptography import x509

from outrelay.identity.errors import NoPeerIdentity
from outrelay.identity.uri import Identity, parse

CertLike = x509.Certificate | bytes | str


def load_certificate(cert: CertLike) -> x509.Certificate:
    """Accept a parsed certificate, DER bytes, or PEM (bytes or str).

    Raises:
        NoPeerIdentity: the input is not a certificate.
    """
    if isinstance(cert, x509.Certificate):
        return cert
    data = cert.encode("ascii") if isinstance(cert, str) else bytes(cert)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise NoPeerIdentity(f"identity: peer certificate does not parse: {exc}") from None


def peer_uri(cert: CertLike | None) -> str:
    """The first URI SAN of ``cert`` as a string, exactly as written in the certificate.

    The certificate must already have been verified by the TLS stack; this only
    reads it.

    Raises:
        NoPeerIdentity: no certificate, no SAN extension, or no URI SAN.
    """
    if cert is None or cert == b"" or cert == "":
        raise NoPeerIdentity("identity: peer presented no certificate")
    parsed = load_certificate(cert)
    try:
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise NoPeerIdentity(
            f"identity: peer certificate {parsed.subject.rfc4514_string()!r} has no SAN extension"
        ) from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise NoPeerIdentity(
            f"identity: peer certificate {parsed.subject.rfc4514_string()!r} has no URI SAN"
        )
    return uris[0]


def peer_identity(cert: CertLike | None) -> Identity:
    """The identity of a verified peer certificate, from its first URI SAN.

    Raises:
        NoPeerIdentity: no certificate or no URI SAN.
        IdentityError: the first URI SAN is not a valid identity URI (subclass
            naming the bad part).
    """
    return parse(peer_uri(cert))
