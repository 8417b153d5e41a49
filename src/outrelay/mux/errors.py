"""yamux errors, shared by the compiled and the pure session.

Errors the peer causes are :class:`ProtocolError`: the session answers them
with a GoAway carrying :attr:`YamuxError.goaway_code` and closes (they are not
raised out of ``receive_data``; ``decode_header`` raises them). Local misuse of
a closed connection or stream raises the transport's errors
(``ConnectionClosedError`` / ``StreamClosedError``) so the relay and agent
handle both transports with the same ``except``.
"""

from __future__ import annotations

from outrelay.errors import OutRelayError
from outrelay.mux.constants import GOAWAY_INTERNAL_ERROR, GOAWAY_PROTOCOL_ERROR
from outrelay.transport.errors import ConnectionClosedError, StreamClosedError


class YamuxError(OutRelayError):
    """Base class of the yamux codec and session errors."""

    #: Wire meaning: the GoAway code the session closes with for this error.
    goaway_code: int = GOAWAY_INTERNAL_ERROR


class ProtocolError(YamuxError):
    """The peer broke the yamux protocol: GoAway(protocol error), then close."""

    goaway_code = GOAWAY_PROTOCOL_ERROR


class InvalidVersion(ProtocolError):
    """A header's version byte is not 0."""


class InvalidType(ProtocolError):
    """A header's type byte is not Data, WindowUpdate, Ping or GoAway."""


class InvalidStreamId(ProtocolError):
    """A stream id the frame may not carry: 0 for a stream frame, non-0 for
    Ping/GoAway, a SYN with our parity, or a frame for a stream never opened."""


class DuplicateStream(InvalidStreamId):
    """A SYN for a stream id that is open or was used before."""


class WindowExceeded(ProtocolError):
    """The peer sent more Data than the stream's receive window allowed, or
    grew our send window past 2**32-1."""


class StreamClosedByPeer(ProtocolError):
    """Data after the peer's own FIN on the stream."""


class ShortHeader(YamuxError, ValueError):
    """Fewer than 12 bytes where a whole header is needed (a caller's mistake)."""


class StreamsExhausted(ConnectionClosedError):
    """All 2**31 stream ids of our side were used: open a new connection."""


__all__ = [
    "ConnectionClosedError",
    "DuplicateStream",
    "InvalidStreamId",
    "InvalidType",
    "InvalidVersion",
    "ProtocolError",
    "ShortHeader",
    "StreamClosedByPeer",
    "StreamClosedError",
    "StreamsExhausted",
    "WindowExceeded",
    "YamuxError",
]
