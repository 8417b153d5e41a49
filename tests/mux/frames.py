"""Frames built in the tests from the spec (struct only, not the codec under test)."""

from __future__ import annotations

import struct

DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
KiB = 1024
WINDOW = 256 * KiB


def hdr(kind: int, flags: int, sid: int, length: int) -> bytes:
    return struct.pack(">BBHII", 0, kind, flags, sid, length)


def data(sid: int, payload: bytes, flags: int = 0) -> bytes:
    return hdr(DATA, flags, sid, len(payload)) + payload


def update(sid: int, delta: int, flags: int = 0) -> bytes:
    return hdr(WINDOW_UPDATE, flags, sid, delta)


def parse(wire: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """Split a byte stream into ``(type, flags, stream, length, payload)`` frames."""
    out = []
    pos = 0
    while pos < len(wire):
        version, kind, flags, sid, length = struct.unpack_from(">BBHII", wire, pos)
        assert version == 0
        pos += 12
        payload = b""
        if kind == DATA:
            payload = wire[pos : pos + length]
            assert len(payload) == length, "cut frame"
            pos += length
        out.append((kind, flags, sid, length, payload))
    return out
