"""Fair share in RelayCore: per-caller stream slots per provider (issue 12, finding 3)."""

from __future__ import annotations

from outrelay.orp import FrameType
from outrelay.proto import orp_pb2
from outrelay.relay.actions import OpenStream
from outrelay.relay.state import MAX_STREAMS_PER_CALLER

from .harness import World, frame

LIMIT = 3


def _accept(w: World, pconn: int, sid: int) -> None:
    w.data(pconn, sid, frame(FrameType.STREAM_ACCEPT))


def test_default_limit_lets_a_heavy_client_run_200_streams() -> None:
    assert MAX_STREAMS_PER_CALLER >= 200
    w = World()
    pconn, puri = w.provider("svc")
    cconn, curi = w.agent()
    for i in range(200):
        w.open(cconn, 4 + 4 * i, "svc")
    assert len(w.opened[pconn]) == 200
    assert w.core.streams_held(curi, puri) == 200


def test_open_beyond_caller_limit_rejected_at_once_across_connections() -> None:
    w = World(max_streams_per_caller=LIMIT)
    pconn, puri = w.provider("svc")
    c1, curi = w.agent()
    c2, _ = w.connect(curi)  # the same caller identity on a second connection
    w.hello(c2, curi)
    w.open(c1, 4, "svc")
    w.open(c1, 8, "svc")
    w.open(c2, 4, "svc")
    assert len(w.opened[pconn]) == LIMIT
    w.open(c2, 8, "svc")
    assert w.reject_of(c2, 8) == (503, "caller stream limit reached")
    assert len(w.opened[pconn]) == LIMIT  # the provider never saw it
    assert w.metrics.counter("stream_rejects_503").value == 1
    # another caller of the same provider is not affected
    other, ouri = w.agent()
    w.open(other, 4, "svc")
    assert len(w.opened[pconn]) == LIMIT + 1
    assert w.core.streams_held(curi, puri) == LIMIT
    assert w.core.streams_held(ouri, puri) == 1


def test_caller_limit_is_per_provider() -> None:
    w = World(max_streams_per_caller=1)
    p1, _ = w.provider("a")
    p2, _ = w.provider("b")
    c, _ = w.agent()
    w.open(c, 4, "a")
    w.open(c, 8, "b")
    assert len(w.opened[p1]) == 1 and len(w.opened[p2]) == 1


def test_slot_given_back_when_splice_ends() -> None:
    w = World(max_streams_per_caller=1)
    pconn, puri = w.provider("svc")
    c, curi = w.agent()
    w.open(c, 4, "svc")
    _accept(w, pconn, w.opened[pconn][-1])
    (splice,) = w.splices
    w.open(c, 8, "svc")
    assert w.reject_of(c, 8)[0] == 503
    w.apply(w.core.splice_ended(splice.flow))
    assert w.core.streams_held(curi, puri) == 0
    w.open(c, 12, "svc")
    assert len(w.opened[pconn]) == 2


def test_slot_given_back_on_consumer_reset_and_provider_reject() -> None:
    w = World(max_streams_per_caller=1)
    pconn, puri = w.provider("svc")
    c, curi = w.agent()
    w.open(c, 4, "svc")
    w.apply(w.core.stream_aborted(c, 4))  # consumer resets before the answer
    assert w.core.streams_held(curi, puri) == 0
    w.open(c, 8, "svc")
    sid = w.opened[pconn][-1]
    reject = orp_pb2.StreamReject(code=503, reason="busy")
    w.data(pconn, sid, frame(FrameType.STREAM_REJECT, reject))
    assert w.reject_of(c, 8) == (503, "provider rejected")
    assert w.core.streams_held(curi, puri) == 0


def test_slot_given_back_when_consumer_connection_closes() -> None:
    w = World(max_streams_per_caller=1)
    pconn, puri = w.provider("svc")
    c, curi = w.agent()
    w.open(c, 4, "svc")
    w.apply(w.core.connection_closed(c))
    assert w.core.streams_held(curi, puri) == 0


def test_resumed_stream_takes_the_slot_of_the_lost_one() -> None:
    w = World(max_streams_per_caller=1)
    pconn, puri = w.provider("svc")
    c, curi = w.agent()
    sid_ = 0xABC
    w.open(c, 4, "svc", stream_id=sid_)
    _accept(w, pconn, w.opened[pconn][-1])
    (splice,) = w.splices
    w.apply(w.core.splice_ended(splice.flow))  # the relay legs broke
    assert w.core.streams_held(curi, puri) == 0
    for conn in (c, pconn):
        msg = orp_pb2.StreamResume(stream_id=sid_, my_position=0, peer_ack_position=0)
        w.data(conn, 8 if conn == c else 4, frame(FrameType.STREAM_RESUME, msg))
    assert len(w.splices) == 2
    assert w.core.streams_held(curi, puri) == 1  # held again by the resumed stream
    w.open(c, 12, "svc")
    assert w.reject_of(c, 12)[0] == 503
    w.apply(w.core.splice_ended(w.splices[-1].flow))
    assert w.core.streams_held(curi, puri) == 0


def test_provider_without_stream_credit_rejects_503_at_once() -> None:
    w = World()
    pconn, puri = w.provider("svc")
    c, curi = w.agent()
    # the shell finds no stream credit on the provider's connection
    opens: list[OpenStream] = []
    msg = orp_pb2.OpenStream(target_service="svc")
    for action in w.core.stream_data(c, 4, frame(FrameType.OPEN_STREAM, msg)):
        assert isinstance(action, OpenStream)
        opens.append(action)
    (op,) = opens
    w.apply(w.core.stream_open_failed(op.token, busy=True))
    assert w.reject_of(c, 4) == (503, "provider stream limit reached")
    assert w.core.streams_held(curi, puri) == 0
