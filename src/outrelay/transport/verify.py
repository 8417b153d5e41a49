"""Peer certificate verification with cryptography's ``x509.verification``.

aioquic does not verify client certificates at all (it only checks that the
client holds the key of whatever it sent), so the server side runs
:func:`verify_client` on the leaf and chain of every completed handshake
before the application sees the connection:

* the chain must lead to one of the ``--ca`` certificates (intermediates
  taken from what the peer sent);
* every certificate must be valid at ``now``;
* the leaf must carry an extended key usage extension that lists
  ``clientAuth`` (cryptography's verifier accepts a leaf with no EKU
  extension at all; we do not);
* the leaf must carry a URI SAN, the peer's identity (wire.md §7.3).

The client side (an agent dialling a relay) keeps aioquic's own in-handshake
check (``cafile`` + ``server_name``, OpenSSL store, no EKU check) and adds
:func:`verify_server` on the completed handshake, which also checks the
``serverAuth`` usage with the same verifier.

Then, on both sides, :func:`check_role`: the verified leaf's first URI SAN
must be an identity of an accepted role (an agent accepts only a relay, a
relay's agent listener only agents) and, if pinned, exactly the pinned URI.
A refusal closes the connection with the ``access_denied`` alert before the
application sees it, so not one application byte is exchanged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from outrelay.identity.errors import NoPeerIdentity
from outrelay.identity.peer import peer_uri
from outrelay.identity.roles import RoleRefused, require_role
from outrelay.identity.uri import Role
from outrelay.transport.errors import CertificateRequired, PeerVerificationError

#: TLS alerts used as QUIC crypto errors (``0x100 + alert``).
ALERT_BAD_CERTIFICATE = 42
ALERT_UNSUPPORTED_CERTIFICATE = 43
ALERT_CERTIFICATE_EXPIRED = 45
ALERT_UNKNOWN_CA = 48
ALERT_ACCESS_DENIED = 49
ALERT_CERTIFICATE_REQUIRED = 116


@dataclass(frozen=True)
class VerifiedPeer:
    """A peer whose certificate chain verified against our CA bundle."""

    #: The peer's leaf certificate.
    leaf: x509.Certificate
    #: The verified chain, leaf first, trust anchor last.
    chain: tuple[x509.Certificate, ...]
    #: First URI SAN of the leaf, as written (the identity); ``None`` if absent.
    uri: str | None


def load_ca_bundle(source: str | os.PathLike[str] | bytes) -> list[x509.Certificate]:
    """Load every certificate of a PEM bundle given as a path or as PEM bytes.

    Raises:
        PeerVerificationError: the bundle holds no certificate or does not parse.
    """
    if isinstance(source, bytes):
        data = source
    else:
        with open(source, "rb") as file:
            data = file.read()
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PeerVerificationError(f"CA bundle does not parse: {exc}") from None
    if not certs:
        raise PeerVerificationError("CA bundle holds no certificate")
    return certs


def _check(
    verifier: verification.ClientVerifier | verification.ServerVerifier,
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    now: dt.datetime,
) -> list[x509.Certificate]:
    if leaf.not_valid_after_utc < now or leaf.not_valid_before_utc > now:
        raise PeerVerificationError(
            f"certificate {leaf.subject.rfc4514_string()!r} is not valid now "
            f"(valid {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
            f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})",
            tls_alert=ALERT_CERTIFICATE_EXPIRED,
        )
    try:
        result = verifier.verify(leaf, list(intermediates))
    except verification.VerificationError as exc:
        message = str(exc)
        if "candidates exhausted" in message:
            alert = ALERT_UNKNOWN_CA
        elif "EKU" in message:
            alert = ALERT_UNSUPPORTED_CERTIFICATE
        else:
            alert = ALERT_BAD_CERTIFICATE
        raise PeerVerificationError(
            f"certificate {leaf.subject.rfc4514_string()!r} rejected: {message}",
            tls_alert=alert,
        ) from None
    chain = result.chain if isinstance(result, verification.VerifiedClient) else result
    return list(chain)


def _require_usage(leaf: x509.Certificate, usage: x509.ObjectIdentifier, name: str) -> None:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or usage not in eku:
        raise PeerVerificationError(
            f"certificate {leaf.subject.rfc4514_string()!r} is not valid for {name}",
            tls_alert=ALERT_UNSUPPORTED_CERTIFICATE,
        )


def _first_uri(leaf: x509.Certificate) -> str | None:
    try:
        return peer_uri(leaf)
    except NoPeerIdentity:
        return None


def verify_client(
    leaf: x509.Certificate | None,
    intermediates: Sequence[x509.Certificate],
    ca_certs: Sequence[x509.Certificate],
    *,
    now: dt.datetime | None = None,
    require_uri: bool = True,
) -> VerifiedPeer:
    """Verify a client's certificate chain for mutual TLS; return the verified peer.

    Raises:
        CertificateRequired: the client sent no certificate.
        PeerVerificationError: chain, validity, ``clientAuth`` usage or (with
            ``require_uri``) the URI SAN check failed; ``tls_alert`` says which.
    """
    if leaf is None:
        raise CertificateRequired("client presented no certificate")
    when = now or dt.datetime.now(dt.UTC)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(ca_certs)))
        .time(when)
        .build_client_verifier()
    )
    chain = _check(verifier, leaf, intermediates, when)
    _require_usage(leaf, ExtendedKeyUsageOID.CLIENT_AUTH, "client authentication")
    uri = _first_uri(leaf)
    if require_uri and uri is None:
        raise PeerVerificationError(
            f"client certificate {leaf.subject.rfc4514_string()!r} has no URI SAN"
        )
    return VerifiedPeer(leaf=leaf, chain=tuple(chain), uri=uri)


def verify_server(
    leaf: x509.Certificate | None,
    intermediates: Sequence[x509.Certificate],
    ca_certs: Sequence[x509.Certificate],
    server_name: str,
    *,
    now: dt.datetime | None = None,
) -> VerifiedPeer:
    """Verify a server's certificate chain for ``server_name`` (DNS name or IP).

    Raises:
        CertificateRequired: the server sent no certificate.
        PeerVerificationError: chain, validity, name or ``serverAuth`` usage failed.
    """
    if leaf is None:
        raise CertificateRequired("server presented no certificate")
    subject: verification.Subject
    try:
        subject = verification.IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        subject = verification.DNSName(server_name)
    when = now or dt.datetime.now(dt.UTC)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(ca_certs)))
        .time(when)
        .build_server_verifier(subject)
    )
    chain = _check(verifier, leaf, intermediates, when)
    _require_usage(leaf, ExtendedKeyUsageOID.SERVER_AUTH, "server authentication")
    return VerifiedPeer(leaf=leaf, chain=tuple(chain), uri=_first_uri(leaf))


def check_role(
    peer: VerifiedPeer,
    roles: Sequence[Role] | frozenset[Role] | None,
    *,
    pinned: str | None = None,
    side: str = "peer",
) -> None:
    """Refuse a verified peer whose identity is not of an accepted role (or not ``pinned``).

    ``roles`` None accepts any role (only ``pinned`` is checked); ``side``
    names the peer in the message ("server", "client").

    Raises:
        PeerVerificationError: with ``tls_alert`` access_denied (49); the
            reason names what was expected and what was presented.
    """
    accepted = list(roles) if roles is not None else list(Role)[1:]
    try:
        require_role(peer.uri, accepted, pinned=pinned, peer=side)
    except RoleRefused as exc:
        raise PeerVerificationError(
            f"{side} certificate refused: {exc}", tls_alert=ALERT_ACCESS_DENIED
        ) from None
