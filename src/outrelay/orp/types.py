"""ORP constants and enumerations (wire.md sections 2, 3 and 5).

Plain Python, imported by both the compiled and the pure twins so that the
two agree on every code and name.
"""

from enum import IntEnum

#: Bytes in every frame header.
HEADER_SIZE = 8
#: Largest payload a frame may carry (exactly 2**24 is allowed).
MAX_PAYLOAD = 1 << 24
#: Largest payload of a frame on a control stream (64 KiB). The largest real
#: control frame (a HELLO or REGISTER: a URI, a service name and an address)
#: is a few hundred bytes; the data-stream bytes after an opening frame are
#: never parsed, so this bounds what a peer can make a decoder hold.
MAX_CONTROL_PAYLOAD = 1 << 16
#: The protocol version we write and the only one we accept.
VERSION = 1
#: Largest value of the 11-bit type field.
MAX_TYPE = 0x7FF


class FrameType(IntEnum):
    """Every frame-type code of the reference, reserved ones included."""

    HELLO = 0x001
    HELLO_ACK = 0x002
    REGISTER = 0x003
    REGISTER_ACK = 0x004
    RESOLVE = 0x005  # reserved
    RESOLVE_RESP = 0x006  # reserved
    OPEN_STREAM = 0x010
    INCOMING_STREAM = 0x011
    STREAM_ACCEPT = 0x012
    STREAM_REJECT = 0x013
    PING = 0x020
    PONG = 0x021
    POLICY_UPDATE = 0x030  # reserved
    METRIC_REPORT = 0x040  # reserved
    GOAWAY = 0x0FF  # reserved
    STREAM_INIT = 0x100  # reserved
    STREAM_DATA = 0x101  # reserved
    STREAM_FIN = 0x102  # reserved
    STREAM_RESET = 0x103  # reserved
    STREAM_CHECKPOINT = 0x110
    STREAM_RESUME = 0x111
    OBSERVED_ADDR_QUERY = 0x120
    OBSERVED_ADDR_RESP = 0x121
    CANDIDATE_OFFER = 0x122
    CANDIDATE_ANSWER = 0x123
    MIGRATE_TO_P2P = 0x124
    MIGRATE_TO_RELAY = 0x125
    FORWARD_STREAM = 0x140
    ALLOC_GRANTED = 0x151
    STREAM_READY = 0x152


class StreamState(IntEnum):
    """States of a stream (wire.md 5); values match the reference."""

    INIT = 0
    OPENING = 1
    ACCEPTED = 2
    SPLICED = 3
    CLOSING = 4
    CLOSED = 5

    def __str__(self) -> str:
        return self.name.capitalize()


class StreamEvent(IntEnum):
    """Events that drive the stream FSM (wire.md 5)."""

    OPEN = 0
    ACCEPT = 1
    SPLICE = 2
    FIN = 3
    RESET = 4

    def __str__(self) -> str:
        return self.name.capitalize()
