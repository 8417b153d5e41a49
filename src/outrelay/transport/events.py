"""What a connection reports to the application: frozen, past-tense events."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509


class Event:
    """Base class of transport events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HandshakeVerified(Event):
    """The handshake completed and the peer's certificate passed verification."""

    #: The peer's verified leaf (``None`` only with ``verify_peer=False`` and no cert).
    peer_cert: x509.Certificate | None
    #: First URI SAN of the leaf: the peer's identity (``None`` if it has none).
    peer_uri: str | None
    #: The verified chain, leaf first (empty when not verified).
    peer_chain: tuple[x509.Certificate, ...]
    #: The negotiated ALPN token.
    alpn: str | None


@dataclass(frozen=True, slots=True)
class StreamDataReceived(Event):
    """Bytes arrived on a stream; grant them back once consumed."""

    #: The QUIC stream id.
    stream_id: int
    #: The bytes, in order (may be empty when only the FIN arrived).
    data: bytes
    #: The peer finished its sending side (FIN).
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """The peer abruptly ended its sending side of a stream (RESET_STREAM)."""

    #: The QUIC stream id.
    stream_id: int
    #: The peer's application error code.
    error_code: int


@dataclass(frozen=True, slots=True)
class StopSendingReceived(Event):
    """The peer asked us to stop sending (STOP_SENDING); our side is now reset."""

    #: The QUIC stream id.
    stream_id: int
    #: The peer's application error code.
    error_code: int


@dataclass(frozen=True, slots=True)
class SendCapacityAvailable(Event):
    """The peer acknowledged data we sent: the stream's send buffer shrank."""

    #: The QUIC stream id.
    stream_id: int
    #: Bytes that left the send buffer since the last report.
    drained: int
    #: Bytes still buffered (unacknowledged) on the stream.
    buffered: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The connection is over; no more events follow."""

    #: QUIC error code (transport, crypto ``0x100+alert``, or application).
    error_code: int
    #: Human-readable reason, from the closing side.
    reason: str
    #: True if this side closed it (including a failed peer verification).
    by_us: bool


@dataclass(frozen=True, slots=True)
class ConnectionIdIssued(Event):
    """A connection id the endpoint must route to this connection (endpoint use)."""

    #: The new connection id.
    connection_id: bytes


@dataclass(frozen=True, slots=True)
class ConnectionIdRetired(Event):
    """A connection id the endpoint must stop routing (endpoint use)."""

    #: The retired connection id.
    connection_id: bytes
