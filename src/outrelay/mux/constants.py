"""yamux v0 wire constants (hashicorp/yamux spec.md), shared by both twins.

Every frame starts with a 12-byte big-endian header: version (u8, always 0),
type (u8), flags (u16), stream id (u32), length (u32). For Data the length is
the payload size; for WindowUpdate it is the window delta; for Ping an opaque
value echoed back; for GoAway the reason code. Ping and GoAway use stream 0.
"""

from __future__ import annotations

#: The only protocol version.
VERSION = 0
#: Bytes in a frame header.
HEADER_SIZE = 12

# Frame types.
TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3
#: The highest frame type defined.
MAX_TYPE = TYPE_GO_AWAY

# Flags (bits of the 16-bit flags field; others are ignored on receipt).
FLAG_SYN = 0x1  #: opens a stream (first frame of the opener)
FLAG_ACK = 0x2  #: accepts a stream (first frame of the acceptor); answers a Ping
FLAG_FIN = 0x4  #: half-close: the sender sends nothing more on the stream
FLAG_RST = 0x8  #: abort the stream, both directions

# GoAway codes.
GOAWAY_NORMAL = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

#: Every stream starts with this send and receive window (bytes).
INITIAL_WINDOW = 256 * 1024
#: Largest Data frame we send: a write is cut into frames of at most this.
#: Big frames mean fewer Python operations per byte; 64 KiB still lets
#: several streams interleave within one 256 KiB window.
MAX_DATA_FRAME = 64 * 1024
#: Concurrent peer-opened streams we accept by default (more: RST).
DEFAULT_MAX_STREAMS = 1024
#: Concurrent streams we assume the peer accepts (yamux has no frame to say).
PEER_MAX_STREAMS = 1024
#: Largest stream id, window, delta, Ping value or GoAway code on the wire.
MAX_U32 = 0xFFFFFFFF
#: Error code reported in StreamReset / StopSendingReceived for a peer's RST
#: (a yamux RST carries no code).
RESET_CODE = 0
