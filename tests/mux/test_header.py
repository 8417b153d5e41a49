"""yamux header codec: golden vectors written from the public spec (hashicorp/yamux spec.md)."""

from __future__ import annotations

from types import ModuleType

import pytest

from outrelay.mux import constants as c
from outrelay.mux.errors import InvalidType, InvalidVersion, ShortHeader
from outrelay.transport.events import ConnectionClosed

from .pump import drain

pytestmark = pytest.mark.dataplane

# version u8 | type u8 | flags u16 | stream id u32 | length u32, big endian
GOLDEN = [
    # Data, SYN, stream 1, 5 payload bytes
    ((0, 0x1, 1, 5), "00 00 0001 00000001 00000005"),
    # WindowUpdate, no flag, stream 3, delta 262144 (256 KiB)
    ((1, 0, 3, 262144), "00 01 0000 00000003 00040000"),
    # WindowUpdate with ACK (acceptor's first frame), stream 2, delta 0
    ((1, 0x2, 2, 0), "00 01 0002 00000002 00000000"),
    # Ping with ACK, opaque value 0x12345678, stream 0
    ((2, 0x2, 0, 0x12345678), "00 02 0002 00000000 12345678"),
    # GoAway, protocol error (1), stream 0
    ((3, 0, 0, 1), "00 03 0000 00000000 00000001"),
    # Data, FIN|RST on the highest stream id, the largest length
    ((0, 0x4 | 0x8, 0xFFFFFFFF, 0xFFFFFFFF), "00 00 000c ffffffff ffffffff"),
]


@pytest.mark.parametrize(("fields", "wire"), GOLDEN)
def test_encode_header_matches_the_spec_bytes(yamux: ModuleType, fields: tuple, wire: str) -> None:
    assert yamux.encode_header(*fields) == bytes.fromhex(wire)


@pytest.mark.parametrize(("fields", "wire"), GOLDEN)
def test_decode_header_reads_the_spec_bytes(yamux: ModuleType, fields: tuple, wire: str) -> None:
    assert yamux.decode_header(bytes.fromhex(wire)) == fields


def test_decode_header_at_an_offset(yamux: ModuleType) -> None:
    buf = b"xyz" + bytes.fromhex(GOLDEN[0][1]) + b"tail"
    assert yamux.decode_header(buf, 3) == GOLDEN[0][0]


def test_decode_header_refuses_a_nonzero_version(yamux: ModuleType) -> None:
    with pytest.raises(InvalidVersion, match="version 1"):
        yamux.decode_header(bytes.fromhex("01 00 0000 00000001 00000000"))


def test_decode_header_refuses_an_unknown_type(yamux: ModuleType) -> None:
    with pytest.raises(InvalidType, match="type 4"):
        yamux.decode_header(bytes.fromhex("00 04 0000 00000001 00000000"))


@pytest.mark.parametrize("size", [0, 1, 11])
def test_decode_header_refuses_a_short_buffer(yamux: ModuleType, size: int) -> None:
    with pytest.raises(ShortHeader):
        yamux.decode_header(bytes(size))
    with pytest.raises(ShortHeader):
        yamux.decode_header(bytes(12), 1)


@pytest.mark.parametrize(
    "fields",
    [(4, 0, 0, 0), (-1, 0, 0, 0), (0, 0x10000, 0, 0), (0, 0, 1 << 32, 0), (0, 0, 0, 1 << 32),
     (0, 0, -1, 0), (0, 0, 0, -1)],
)
def test_encode_header_refuses_out_of_range_fields(yamux: ModuleType, fields: tuple) -> None:
    with pytest.raises(ValueError, match="out of range"):
        yamux.encode_header(*fields)


def test_constants_are_the_spec_values() -> None:
    assert (c.TYPE_DATA, c.TYPE_WINDOW_UPDATE, c.TYPE_PING, c.TYPE_GO_AWAY) == (0, 1, 2, 3)
    assert (c.FLAG_SYN, c.FLAG_ACK, c.FLAG_FIN, c.FLAG_RST) == (1, 2, 4, 8)
    assert (c.GOAWAY_NORMAL, c.GOAWAY_PROTOCOL_ERROR, c.GOAWAY_INTERNAL_ERROR) == (0, 1, 2)
    assert c.INITIAL_WINDOW == 256 * 1024 and c.HEADER_SIZE == 12 and c.VERSION == 0


GOAWAY_PROTOCOL = bytes.fromhex("00 03 0000 00000000 00000001")


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ("01 00 0001 00000002 00000000", "version 1"),
        ("00 07 0001 00000002 00000000", "type 7"),
    ],
)
def test_session_answers_a_bad_header_with_goaway_protocol_error(
    yamux: ModuleType, frame: str, why: str
) -> None:
    client = yamux.YamuxSession(client=True)
    client.receive_data(bytes.fromhex(frame))
    assert client.data_to_send() == GOAWAY_PROTOCOL
    (closed,) = drain(client)
    assert isinstance(closed, ConnectionClosed)
    assert closed.error_code == 1 and closed.by_us and why in closed.reason
    assert client.closed
    client.receive_data(bytes.fromhex(GOLDEN[0][1]) + b"hello")  # ignored from now on
    assert drain(client) == [] and client.data_to_send() == b""
