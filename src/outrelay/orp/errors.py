"""ORP errors, shared by the compiled and the pure codec and FSM."""

from outrelay.errors import OutRelayError


class OrpError(OutRelayError):
    """Base class of every ORP codec and state-machine error."""

    #: Wire meaning: True when the receiver must close the whole connection
    #: (CONNECTION_CLOSE with the message as its reason), not only stop
    #: reading the stream the error came from.
    closes_connection: bool = False


class InvalidVersion(OrpError):
    """A header carries a protocol version this implementation does not speak."""


class InvalidType(OrpError):
    """A frame type does not fit the 11-bit type field."""


class PayloadTooLarge(OrpError):
    """A payload (or a header's declared length) exceeds MAX_PAYLOAD."""


class FrameTooLarge(PayloadTooLarge):
    """A header declares more payload than its decoder's limit allows.

    Control streams are decoded with the limit MAX_CONTROL_PAYLOAD; a frame
    header over it is refused from its 8 bytes alone, before any payload is
    read. Wire meaning: the peer broke the protocol on a stream that must stay
    parseable, so the receiver closes the connection with this message as the
    reason (relay and agent alike).
    """

    closes_connection = True


class InvalidFlags(OrpError):
    """Flags do not fit the 16-bit flags field."""


class ShortHeader(OrpError):
    """Fewer than HEADER_SIZE bytes were given where a whole header is needed."""


class TruncatedFrame(OrpError):
    """The byte stream ended inside a frame (header or payload cut off)."""


class TypeMismatch(OrpError):
    """A frame's type is not the one the caller expected."""


class MessageError(OrpError):
    """A payload could not be encoded to or decoded from its protobuf message."""


class InvalidTransition(OrpError):
    """An event is not legal in the stream's current state (state unchanged)."""


def not_copyable(kind: str) -> TypeError:
    """What both twins of a stateful ORP object (decoder, FSM) raise when pickled or copied."""
    return TypeError(f"orp: a {kind} cannot be pickled or copied")
