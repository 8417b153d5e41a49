"""RelayCore in memory: control frames over MAX_CONTROL_PAYLOAD close the connection (issue 12, 7).

The header alone decides, before HELLO or after it, also while a REGISTER
waits for the controller; a frame at the limit is served as before.
"""

from __future__ import annotations

from outrelay.orp import MAX_CONTROL_PAYLOAD, FrameType
from outrelay.proto import orp_pb2

from .harness import World, frame

HUGE = 16 * 1024 * 1024
REASON = (
    f"control stream: orp: frame header declares {HUGE} payload bytes, "
    f"over the limit of {MAX_CONTROL_PAYLOAD}"
)


def header(length: int, ftype: int = FrameType.REGISTER) -> bytes:
    return ((1 << 13) | ftype).to_bytes(2, "big") + b"\x00\x00" + length.to_bytes(4, "big")


def test_oversized_header_after_hello_closes_the_connection() -> None:
    w = World()
    conn, uri = w.agent()
    w.data(conn, 0, header(HUGE)[:5])
    assert conn not in w.closed
    w.data(conn, 0, header(HUGE)[5:] + b"x" * 1000)
    assert w.closed[conn] == REASON
    w.data(conn, 0, b"x" * 1000)  # whatever still arrives is ignored
    assert w.closed[conn] == REASON


def test_oversized_header_as_first_frame_closes_before_hello() -> None:
    w = World()
    conn, uri = w.connect()
    w.data(conn, 0, header(MAX_CONTROL_PAYLOAD + 1, FrameType.HELLO))
    assert w.closed[conn] == REASON.replace(str(HUGE), str(MAX_CONTROL_PAYLOAD + 1))
    assert not w.sent[(conn, 0)]
    assert uri not in w.core.local


def test_oversized_header_held_behind_a_register_closes_when_read() -> None:
    w = World()
    conn, _ = w.agent()
    w.controller.hold = True
    w.data(conn, 0, frame(FrameType.REGISTER, orp_pb2.Register(service_name="svc")))
    w.data(conn, 0, header(HUGE))  # not read while the REGISTER waits
    assert conn not in w.closed
    w.release()
    assert w.closed[conn] == REASON


def test_control_frame_at_the_limit_is_read() -> None:
    w = World()
    conn, _ = w.agent()
    w.data(conn, 0, header(MAX_CONTROL_PAYLOAD, 0x7FF) + bytes(MAX_CONTROL_PAYLOAD))
    w.data(conn, 0, frame(FrameType.PING))
    assert conn not in w.closed
    assert w.frames(conn, 0)[-1].type == FrameType.PONG
