"""Stream resume, sans-IO: positions, checkpoints, the ring, the FSM, the core's resume frames."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from outrelay.agent import events as ev
from outrelay.agent import resume as resume_mod
from outrelay.agent.core import AgentProtocol, Phase
from outrelay.agent.resume import (
    IllegalResumePhase,
    ResumableState,
    ResumeInconsistent,
    ResumePhase,
)
from outrelay.orp import FrameDecoder, FrameType, encode_message
from outrelay.proto import orp_pb2 as pb
from outrelay.resume import IMPLEMENTATION, PositionEvicted, _ring_py

KiB = 1024
MiB = 1024 * KiB
SID = 0x1234


@pytest.fixture(params=["compiled", "pure"], autouse=True)
def ring_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run every test over the compiled ring (when built) and the pure twin."""
    if request.param == "pure":
        monkeypatch.setattr(resume_mod, "RingBuffer", _ring_py.RingBuffer)
    elif IMPLEMENTATION != "compiled":
        pytest.skip("compiled ring not built")
    yield request.param


def _lost(state: ResumableState, now: float = 0.0) -> None:
    state.detach(now)
    state.resume_request()


# -- positions and checkpoints -----------------------------------------------------


def test_positions_follow_writes_and_deliveries() -> None:
    st = ResumableState(SID)
    st.on_write(b"a" * 64)
    st.on_write(b"")
    assert st.filter_inbound(b"b" * 48) == b"b" * 48
    assert (st.sent, st.recv, st.peer_ack) == (64, 48, 0)
    assert st.ring_len == 64 and st.ring_tail == 0


def test_checkpoint_only_when_data_flowed() -> None:
    st = ResumableState(SID)
    assert st.checkpoint() is None  # idle: nothing to say
    st.on_write(b"x" * 64)
    st.filter_inbound(b"y" * 48)
    assert st.checkpoint() == (64, 48)  # A46: my 64, peer_ack 48
    assert st.checkpoint() is None  # nothing moved since
    st.filter_inbound(b"z")
    assert st.checkpoint() == (64, 49)
    assert st.checkpoint() is None


def test_checkpoint_due_after_a_quarter_of_the_ring_received() -> None:
    """A fast stream is acknowledged by volume too: once a quarter of ring_max
    arrived since the last checkpoint, one is due at once (not at the next tick)."""
    st = ResumableState(SID, ring_min=4096, ring_max=4096)
    assert not st.checkpoint_due
    st.filter_inbound(b"y" * 1023)
    assert not st.checkpoint_due
    st.filter_inbound(b"y")
    assert st.checkpoint_due  # 1024 = 4096 / 4
    assert st.checkpoint() == (0, 1024)
    assert not st.checkpoint_due  # counted from the last checkpoint
    st.on_write(b"x" * 4096)  # what we send does not make one due
    assert not st.checkpoint_due


def test_no_checkpoint_while_lost_then_one_after_resume() -> None:
    st = ResumableState(SID)
    st.on_write(b"x" * 10)
    st.detach(1.0)
    assert st.checkpoint() is None
    st.on_write(b"x" * 5)  # the application keeps writing during the pause
    assert st.checkpoint() is None
    st.resume_request()
    assert st.resumed(0, 10, 2.0) == b"x" * 5
    assert st.checkpoint() == (15, 0)


def test_discard_on_peer_ack_is_monotonic_and_clamped() -> None:
    st = ResumableState(SID, ring_min=4096, ring_max=4096)
    st.on_write(bytes(200))
    assert st.on_peer_checkpoint(150)  # A44
    assert st.peer_ack == 150 and st.ring_tail == 150 and st.ring_len == 50
    assert not st.on_peer_checkpoint(100)  # older: ignored
    assert st.peer_ack == 150 and st.ring_tail == 150
    assert st.on_peer_checkpoint(10_000)  # beyond what we sent: clamped
    assert st.peer_ack == 200 and st.ring_len == 0


# -- resume ---------------------------------------------------------------------------


def test_resume_request_reports_positions() -> None:
    st = ResumableState(SID)
    st.on_write(b"q" * 7)
    st.filter_inbound(b"r" * 3)
    st.detach(5.0)
    assert st.phase is ResumePhase.DETACHED
    assert st.resume_request() == (SID, 7, 3)
    assert st.phase is ResumePhase.RESUMING


def test_retransmit_the_gap_from_the_ring() -> None:
    st = ResumableState(SID, ring_min=4096, ring_max=4096)
    st.on_write(b"\xab" * 100)
    _lost(st, 1.0)
    gap = st.resumed(99, 30, 1.25)  # A41: peer got 30 of our bytes
    assert gap == b"\xab" * 70
    assert st.phase is ResumePhase.LIVE
    assert st.peer_ack == 30 and st.ring_tail == 30
    assert st.pause == pytest.approx(0.25)


def test_nothing_to_retransmit_when_the_peer_has_everything() -> None:
    st = ResumableState(SID)
    st.on_write(b"x" * 10)
    _lost(st)
    assert st.resumed(0, 10, 0.5) == b""


def test_duplicate_prefix_dropped() -> None:
    st = ResumableState(SID)
    st.filter_inbound(b"0123456789")
    st.detach(0.0)
    assert st.resume_request() == (SID, 0, 10)
    # late bytes of the old leg, delivered after STREAM_RESUME went out
    assert st.filter_inbound(b"abcde") == b"abcde"
    assert st.recv == 15
    st.resumed(20, 0, 1.0)
    # the partner re-sends from the 10 we advertised: the first 5 are duplicates
    assert st.filter_inbound(b"abc") == b""
    assert st.filter_inbound(b"deFGH") == b"FGH"
    assert st.recv == 18
    assert st.filter_inbound(b"IJ") == b"IJ"


def test_ring_overrun_cannot_resume() -> None:
    st = ResumableState(SID, ring_min=32, ring_max=32)
    st.on_write(bytes(200))  # A43: 32-byte ring, 200 written
    assert not st.resumable
    _lost(st)
    with pytest.raises(PositionEvicted, match="evicted"):
        st.resumed(0, 10, 1.0)


def test_overrun_healed_by_acks_is_resumable() -> None:
    st = ResumableState(SID, ring_min=32, ring_max=32)
    st.on_write(bytes(20))
    st.on_peer_checkpoint(20)
    st.on_write(bytes(30))
    assert st.resumable
    _lost(st)
    assert st.resumed(0, 20, 1.0) == bytes(30)


@pytest.mark.parametrize(
    ("partner_sent", "partner_recv", "match"),
    [(0, 11, "acknowledges 11"), (4, 0, "already delivered")],
)
def test_impossible_echo_positions(partner_sent: int, partner_recv: int, match: str) -> None:
    st = ResumableState(SID)
    st.on_write(bytes(10))
    st.filter_inbound(bytes(5))
    _lost(st)
    with pytest.raises(ResumeInconsistent, match=match):
        st.resumed(partner_sent, partner_recv, 1.0)


def test_window_deadline_counts_from_the_first_loss() -> None:
    st = ResumableState(SID, window=3.0)
    assert st.deadline is None and not st.expired(100.0)
    st.detach(10.0)
    st.resume_request()
    st.detach(11.0)  # that session died too: the clock keeps running
    assert st.deadline == 13.0
    assert not st.expired(12.9) and st.expired(13.0)
    st.resume_request()
    st.resumed(0, 0, 12.0)
    assert st.deadline is None


def test_phase_table() -> None:
    st = ResumableState(SID)
    with pytest.raises(IllegalResumePhase):
        st.resume_request()  # LIVE -> RESUMING skips the loss
    with pytest.raises(IllegalResumePhase):
        st.resumed(0, 0, 0.0)
    st.detach(0.0)
    st.detach(0.5)  # idempotent
    assert st.lost_at == 0.0
    st.fail()
    assert st.phase is ResumePhase.CLOSED
    with pytest.raises(IllegalResumePhase):
        st.detach(1.0)


# -- memory: the ring's hysteresis ----------------------------------------------------


def test_ring_grows_for_a_burst_and_shrinks_back_to_min_while_data_flows() -> None:
    st = ResumableState(SID, ring_min=64 * KiB, ring_max=16 * MiB)
    assert st.ring_capacity == 64 * KiB
    st.on_write(bytes(4 * MiB))  # a burst the peer has not acknowledged yet
    assert st.ring_capacity >= 4 * MiB
    # Steady trickle afterwards; each checkpoint acknowledges everything but
    # the last KiB, so the ring never empties: only the hysteresis shrinks it
    # (at most one halving per effective discard, only below a quarter full).
    caps = [st.ring_capacity]
    for _ in range(12):
        st.on_write(bytes(KiB))
        st.on_peer_checkpoint(st.sent - KiB)
        caps.append(st.ring_capacity)
    assert caps == sorted(caps, reverse=True)
    assert all(b >= a // 2 for a, b in zip(caps, caps[1:], strict=False))  # halving, no jumps
    assert st.ring_capacity == 64 * KiB


def test_ring_back_to_min_when_the_burst_is_acknowledged_and_the_stream_idles() -> None:
    st = ResumableState(SID, ring_min=64 * KiB, ring_max=16 * MiB)
    st.on_write(bytes(8 * MiB))
    assert st.ring_capacity == 8 * MiB
    st.on_peer_checkpoint(st.sent)  # one checkpoint, then nothing flows any more
    assert st.ring_capacity == 64 * KiB
    # positions survive the fresh ring
    st.on_write(b"tail")
    _lost(st)
    assert st.resumed(0, 8 * MiB + 2, 1.0) == b"il"


# -- the core's resume frames ---------------------------------------------------------


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    return [(f.type, bytes(f.payload)) for f in FrameDecoder().feed(data)]


def _connected() -> AgentProtocol:
    proto = AgentProtocol("outrelay://acme/agent/x")
    proto.hello(0, 0.0)
    proto.receive(0, encode_message(FrameType.HELLO_ACK, pb.HelloAck()), False, 0.0)
    return proto


def test_core_resume_stream_and_echo() -> None:
    proto = _connected()
    frame = proto.resume_stream(8, SID, 100, 50)
    [(ftype, payload)] = _frames(frame)
    assert ftype == FrameType.STREAM_RESUME
    msg = pb.StreamResume.FromString(payload)
    assert (msg.stream_id, msg.my_position, msg.peer_ack_position) == (SID, 100, 50)
    assert proto.phase(8) is Phase.RESUMING
    msg = pb.StreamResume(stream_id=SID, my_position=80, peer_ack_position=70)
    echo = encode_message(FrameType.STREAM_RESUME, msg)
    assert proto.receive(8, echo[:5], False, 0.0) == []  # a partial frame waits
    out = proto.receive(8, echo[5:] + b"post-resume", False, 0.0)
    assert out == [ev.StreamResumed(8, SID, 80, 70), ev.DataReceived(8, b"post-resume")]
    assert proto.receive(8, b"more", True, 0.0) == [
        ev.DataReceived(8, b"more"),
        ev.StreamEnded(8),
    ]


def test_core_resume_rejected() -> None:
    proto = _connected()
    proto.resume_stream(8, SID, 1, 1)
    rej = encode_message(
        FrameType.STREAM_REJECT, pb.StreamReject(code=504, reason="resume: no peer within 30s")
    )
    assert proto.receive(8, rej, True, 0.0) == [
        ev.ResumeRejected(8, SID, 504, "resume: no peer within 30s")
    ]
    assert proto.phase(8) is Phase.CLOSED


def test_core_resume_echo_for_another_stream_or_no_answer() -> None:
    proto = _connected()
    proto.resume_stream(8, SID, 1, 1)
    echo = encode_message(FrameType.STREAM_RESUME, pb.StreamResume(stream_id=SID + 1))
    [event] = proto.receive(8, echo, False, 0.0)
    assert isinstance(event, ev.StreamAborted) and "not 0x1234" in event.reason
    proto.resume_stream(12, SID, 1, 1)
    [event] = proto.receive(12, b"", True, 0.0)
    assert isinstance(event, ev.StreamAborted) and "without an answer" in event.reason


def test_core_checkpoint_frames_and_reset_codes() -> None:
    proto = _connected()
    [(ftype, payload)] = _frames(proto.checkpoint(0xCAFEF00D, 4096, 1024))
    assert ftype == FrameType.STREAM_CHECKPOINT
    cp = pb.StreamCheckpoint.FromString(payload)
    assert (cp.stream_id, cp.my_position, cp.peer_ack_position) == (0xCAFEF00D, 4096, 1024)
    inbound = proto.receive(0, proto.checkpoint(0xCAFEF00D, 7, 3), False, 0.0)
    assert inbound == [ev.CheckpointReceived(0xCAFEF00D, 7, 3)]
    proto.open_stream(4, "svc", 0.0)
    proto.receive(4, b"app-bytes", False, 0.0)  # opened by data
    [event] = proto.stream_reset(4, 0x101)
    assert isinstance(event, ev.StreamAborted) and event.error_code == 0x101
    proto.resume_stream(8, SID, 0, 0)
    proto.close_stream(8)  # detached: whatever arrives later is ignored
    assert proto.receive(8, b"late", False, 0.0) == []
    assert proto.stream_reset(8, 0x101) == []
