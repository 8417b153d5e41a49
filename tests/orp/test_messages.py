"""Typed ORP payloads: protobuf messages in and out of frames (wire.md 2.3)."""

from __future__ import annotations

import pytest

from outrelay.orp import (
    Frame,
    FrameDecoder,
    FrameType,
    MessageError,
    TypeMismatch,
    decode_header,
    decode_message,
    encode_frame,
    encode_message,
)
from outrelay.proto import orp_pb2

pytestmark = pytest.mark.dataplane


def test_encode_message_is_one_whole_frame() -> None:
    msg = orp_pb2.Hello(protocol_version="orp/1", agent_uri="spiffe://t/agent/a")
    wire = encode_message(FrameType.HELLO, msg)
    payload = msg.SerializeToString()
    assert wire == encode_frame(FrameType.HELLO, payload, 0)
    assert decode_header(wire) == (1, FrameType.HELLO, 0, len(payload))


def test_round_trip_through_decoder() -> None:
    msg = orp_pb2.StreamReject(code=404, reason="no such service")
    (frame,) = FrameDecoder().feed(encode_message(FrameType.STREAM_REJECT, msg))
    got = decode_message(frame, FrameType.STREAM_REJECT, orp_pb2.StreamReject)
    assert isinstance(got, orp_pb2.StreamReject)
    assert got == msg


def test_all_default_message_is_empty_payload() -> None:
    wire = encode_message(FrameType.STREAM_ACCEPT, orp_pb2.StreamAccept())
    assert wire == bytes.fromhex("2012000000000000")
    frame = FrameDecoder().feed(wire)[0]
    assert frame.payload == b""
    assert decode_message(frame, FrameType.STREAM_ACCEPT, orp_pb2.StreamAccept) == (
        orp_pb2.StreamAccept()
    )


def test_type_mismatch() -> None:
    frame = Frame(FrameType.STREAM_REJECT, orp_pb2.StreamReject(code=403).SerializeToString())
    msg = r"^orp: frame type mismatch: got STREAM_REJECT \(0x013\), want HELLO \(0x001\)$"
    with pytest.raises(TypeMismatch, match=msg):
        decode_message(frame, FrameType.HELLO, orp_pb2.Hello)
    with pytest.raises(TypeMismatch, match=r"got 0x7ff, want HELLO"):
        decode_message(Frame(0x7FF), FrameType.HELLO, orp_pb2.Hello)


def test_unparseable_payload() -> None:
    frame = Frame(FrameType.HELLO, b"\xff\xff\xff")
    with pytest.raises(MessageError, match=r"^orp: unmarshal HELLO \(0x001\) as Hello: "):
        decode_message(frame, FrameType.HELLO, orp_pb2.Hello)


def test_invalid_utf8_string_field() -> None:
    # field 2 (agent_uri, string), length 1, byte 0xff: not UTF-8
    frame = Frame(FrameType.HELLO, b"\x12\x01\xff")
    with pytest.raises(MessageError):
        decode_message(frame, FrameType.HELLO, orp_pb2.Hello)


def test_works_with_either_twin(codec: object) -> None:
    msg = orp_pb2.OpenStream(target_service="db", method="tcp", stream_id=7)
    frames = codec.FrameDecoder().feed(  # type: ignore[attr-defined]
        encode_message(FrameType.OPEN_STREAM, msg)
    )
    assert decode_message(frames[0], FrameType.OPEN_STREAM, orp_pb2.OpenStream) == msg
