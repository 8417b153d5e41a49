"""AgentProtocol in memory: control stream, consumer and provider data streams."""

from __future__ import annotations

import pytest

from outrelay.agent import events as ev
from outrelay.agent.core import AgentProtocol, Phase
from outrelay.orp import FrameDecoder, FrameType, decode_message, encode_frame, encode_message
from outrelay.proto import orp_pb2 as pb

URI = "outrelay://acme/agent/00000000-0000-0000-0000-000000000002"
CONTROL = 0


def frames(data: bytes) -> list:
    return FrameDecoder().feed(data)


def started(**kw: float) -> AgentProtocol:
    proto = AgentProtocol(URI, **kw)
    proto.hello(CONTROL, now=0.0)
    out = proto.receive(CONTROL, encode_message(FrameType.HELLO_ACK, pb.HelloAck()), False, 0.0)
    assert out == [ev.HelloAcknowledged("")]
    return proto


def test_hello_frame_and_ack() -> None:
    proto = AgentProtocol(URI)
    data = proto.hello(CONTROL, now=0.0)
    (frame,) = frames(data)
    hello = decode_message(frame, FrameType.HELLO, pb.Hello)
    assert hello.protocol_version == "orp/1" and hello.agent_uri == URI
    assert not list(hello.capabilities)
    assert not proto.established
    assert proto.next_timer() == 10.0
    out = proto.receive(CONTROL, encode_frame(FrameType.HELLO_ACK), False, 1.0)
    assert out == [ev.HelloAcknowledged("")]
    assert proto.established and proto.next_timer() is None


def test_hello_timeout_and_wrong_first_frame() -> None:
    proto = AgentProtocol(URI, hello_timeout=2.0)
    proto.hello(CONTROL, now=0.0)
    assert proto.handle_timer(1.9) == []
    assert proto.handle_timer(2.0) == [ev.HelloTimedOut()]
    other = AgentProtocol(URI)
    other.hello(CONTROL, now=0.0)
    (out,) = other.receive(CONTROL, encode_frame(FrameType.PONG), False, 0.0)
    assert isinstance(out, ev.ProtocolViolated) and "HELLO_ACK" in out.reason
    assert not other.established


def test_register_ack_matching_and_timeout() -> None:
    proto = started(register_timeout=5.0)
    (frame,) = frames(proto.register("echo", "127.0.0.1:9", now=0.0))
    reg = decode_message(frame, FrameType.REGISTER, pb.Register)
    assert (reg.service_name, reg.local_addr) == ("echo", "127.0.0.1:9")
    proto.register("web", "", now=1.0)
    # The controller refused "echo" (silence); "web" is acknowledged by its id.
    ack = encode_message(FrameType.REGISTER_ACK, pb.RegisterAck(service_id="acme/web"))
    assert proto.receive(CONTROL, ack, False, 2.0) == [ev.ServiceRegistered("web", "acme/web")]
    assert proto.next_timer() == 5.0
    assert proto.handle_timer(5.0) == [ev.RegisterTimedOut("echo")]
    assert proto.next_timer() is None


def test_register_ack_in_order_when_id_unknown() -> None:
    proto = started()
    proto.register("a", "", now=0.0)
    proto.register("b", "", now=0.0)
    ack = encode_message(FrameType.REGISTER_ACK, pb.RegisterAck(service_id="x"))
    assert proto.receive(CONTROL, ack + ack, False, 0.0) == [
        ev.ServiceRegistered("a", "x"),
        ev.ServiceRegistered("b", "x"),
    ]
    (stray,) = proto.receive(CONTROL, ack, False, 0.0)
    assert isinstance(stray, ev.ControlFrameIgnored)


def test_control_frames_split_and_misc() -> None:
    proto = started()
    data = (
        encode_frame(FrameType.PONG)
        + encode_message(
            FrameType.OBSERVED_ADDR_RESP, pb.ObservedAddrResp(request_id=7, ip="1.2.3.4", port=9)
        )
        + encode_message(
            FrameType.STREAM_CHECKPOINT,
            pb.StreamCheckpoint(stream_id=5, my_position=10, peer_ack_position=3),
        )
        + encode_frame(0x7FF, b"??")
    )
    out = []
    for i in range(len(data)):  # one byte at a time
        out += proto.receive(CONTROL, data[i : i + 1], False, 0.0)
    assert out[:3] == [
        ev.PongReceived(),
        ev.ObservedAddressReceived(7, "1.2.3.4", 9),
        ev.CheckpointReceived(5, 10, 3),
    ]
    assert isinstance(out[3], ev.ControlFrameIgnored) and out[3].frame_type == 0x7FF
    (closed,) = proto.receive(CONTROL, b"", True, 0.0)
    assert isinstance(closed, ev.ProtocolViolated)


def test_ping_frame() -> None:
    (frame,) = frames(started().ping())
    assert frame.type == FrameType.PING and frame.payload == b""


# -- consumer -------------------------------------------------------------


def open_consumer(proto: AgentProtocol, qid: int = 4) -> int:
    data = proto.open_stream(qid, "echo", now=0.0, method="GET /")
    (frame,) = frames(data)
    msg = decode_message(frame, FrameType.OPEN_STREAM, pb.OpenStream)
    assert (msg.target_service, msg.method) == ("echo", "GET /")
    assert msg.stream_id != 0 and msg.stream_id == proto.stream_id(qid)
    assert proto.phase(qid) is Phase.OPENING
    return msg.stream_id


def ready(stream_id: int) -> bytes:
    return encode_message(FrameType.STREAM_READY, pb.StreamReady(stream_id=stream_id))


def test_consumer_ready_then_data_and_fin() -> None:
    proto = started()
    sid = open_consumer(proto)
    assert proto.receive(CONTROL, ready(sid), False, 0.0) == [ev.StreamOpened(4, sid, "ready")]
    assert proto.receive(4, b"\x20\x13hi", False, 0.0) == [ev.DataReceived(4, b"\x20\x13hi")]
    assert proto.receive(4, b"", True, 0.0) == [ev.StreamEnded(4)]
    # A second STREAM_READY for it is informational.
    assert proto.receive(CONTROL, ready(sid), False, 0.0) == [ev.StreamReadySignalled(sid)]


def test_consumer_data_before_ready_is_held_until_ready() -> None:
    proto = started()
    sid = open_consumer(proto)
    assert proto.receive(4, b"\x20", False, 0.0) == []  # could start a STREAM_REJECT
    assert proto.receive(CONTROL, ready(sid), False, 0.0) == [
        ev.StreamOpened(4, sid, "ready"),
        ev.DataReceived(4, b"\x20"),
    ]


def test_consumer_data_that_cannot_be_a_reject_opens_the_stream() -> None:
    proto = started()
    sid = open_consumer(proto)
    assert proto.receive(4, b"hello", True, 0.0) == [
        ev.StreamOpened(4, sid, "data"),
        ev.DataReceived(4, b"hello"),
        ev.StreamEnded(4),
    ]
    assert proto.receive(CONTROL, ready(sid), False, 0.0) == [ev.StreamReadySignalled(sid)]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_consumer_reject(step: int) -> None:
    proto = started()
    sid = open_consumer(proto)
    data = encode_message(
        FrameType.STREAM_REJECT, pb.StreamReject(code=403, reason="denied: no matching rule")
    )
    out = []
    for i in range(0, len(data), step):
        out += proto.receive(4, data[i : i + step], False, 0.0)
    assert out == [ev.StreamRejected(4, sid, 403, "denied: no matching rule")]
    assert proto.phase(4) is Phase.CLOSED
    assert proto.receive(4, b"", True, 0.0) == []
    assert proto.next_timer() is None


def test_consumer_fin_without_answer_aborts() -> None:
    proto = started()
    open_consumer(proto)
    (out,) = proto.receive(4, b"", True, 0.0)
    assert isinstance(out, ev.StreamAborted)


def test_consumer_ready_timeout_bridges_anyway() -> None:
    proto = started(ready_timeout=3.0)
    sid = open_consumer(proto)
    proto.receive(4, b"\x20\x13", False, 0.0)
    assert proto.next_timer() == 3.0
    assert proto.handle_timer(3.0) == [
        ev.StreamOpened(4, sid, "timeout"),
        ev.DataReceived(4, b"\x20\x13"),
    ]


def test_consumer_reset() -> None:
    proto = started()
    open_consumer(proto)
    (out,) = proto.stream_reset(4, 7)
    assert isinstance(out, ev.StreamAborted) and "7" in out.reason
    proto.forget_stream(4)
    assert proto.phase(4) is None


def test_stream_ids_differ() -> None:
    proto = started()
    assert open_consumer(proto, 4) != open_consumer(proto, 8)


# -- provider -------------------------------------------------------------


def incoming(sid: int = 99, service: str = "echo") -> bytes:
    return encode_message(
        FrameType.INCOMING_STREAM,
        pb.IncomingStream(
            target_service=service,
            method="m",
            source_agent_uri="outrelay://acme/agent/x",
            stream_id=sid,
        ),
    )


def test_provider_incoming_accept() -> None:
    proto = started()
    data = incoming() + b"early"
    out = proto.receive(1, data[:5], False, 0.0) + proto.receive(1, data[5:], False, 0.0)
    assert out == [
        ev.IncomingStreamReceived(1, "echo", "m", "outrelay://acme/agent/x", 99),
        ev.DataReceived(1, b"early"),
    ]
    assert proto.phase(1) is Phase.DECIDING
    (frame,) = frames(proto.accept_stream(1))
    assert frame.type == FrameType.STREAM_ACCEPT and frame.payload == b""
    assert proto.receive(1, b"more", True, 0.0) == [ev.DataReceived(1, b"more"), ev.StreamEnded(1)]


def test_provider_reject_frame() -> None:
    proto = started()
    proto.receive(1, incoming(), False, 0.0)
    (frame,) = frames(proto.reject_stream(1, 404, "no handler"))
    msg = decode_message(frame, FrameType.STREAM_REJECT, pb.StreamReject)
    assert (msg.code, msg.reason) == (404, "no handler")
    assert proto.phase(1) is Phase.CLOSED


def test_provider_bad_first_frame() -> None:
    proto = started()
    (out,) = proto.receive(5, encode_frame(FrameType.PING), False, 0.0)
    assert isinstance(out, ev.StreamAborted)
    (cut,) = proto.receive(9, incoming()[:5], True, 0.0)
    assert isinstance(cut, ev.StreamAborted)


def test_client_initiated_unknown_stream_is_ignored() -> None:
    assert started().receive(8, b"x", False, 0.0) == []
