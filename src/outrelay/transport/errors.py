"""Transport errors: handshake, peer verification, closed streams and connections."""

from __future__ import annotations

from outrelay.errors import OutRelayError


class TransportError(OutRelayError):
    """Base class of the QUIC transport's errors."""


class PeerVerificationError(TransportError):
    """The peer's certificate failed verification (chain, validity, usage, identity).

    ``tls_alert`` is the TLS alert the failure maps to; the connection is
    closed with the QUIC crypto error ``0x100 + tls_alert``.
    """

    #: TLS alert: bad_certificate (42).
    tls_alert: int = 42

    def __init__(self, reason: str, *, tls_alert: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if tls_alert is not None:
            self.tls_alert = tls_alert


class CertificateRequired(PeerVerificationError):
    """The peer presented no certificate at all."""

    #: TLS alert: certificate_required (116).
    tls_alert = 116


class HandshakeError(TransportError):
    """The connection closed before the handshake completed and the peer was verified."""

    def __init__(self, reason: str, *, error_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_code = error_code


class ConnectionClosedError(TransportError):
    """An operation on a connection that is closing or closed."""


class StreamClosedError(TransportError):
    """Data sent on a stream whose sending side was reset or already finished."""
