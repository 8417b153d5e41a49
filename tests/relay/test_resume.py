"""The resume matcher, alone and inside RelayCore, in memory with a fake clock."""

from __future__ import annotations

from outrelay.orp import FrameType, encode_frame
from outrelay.proto import orp_pb2, registry_pb2
from outrelay.relay.actions import StartSplice
from outrelay.relay.errors import ControllerError
from outrelay.relay.resume import (
    Half,
    HalfExpired,
    HalfRefused,
    HalvesMatched,
    ResumeMatcher,
)

from .harness import RELAY_ID, World, frame

SID = 0x00000000DEADBEEF


def _half(handle: int, agent: str, my: int = 0, ack: int = 0, **kw: object) -> Half:
    fields: dict[str, object] = {"tenant": "acme", "stream_id": SID, "echo": True}
    fields.update(kw)
    return Half(handle, agent=agent, my_position=my, peer_ack_position=ack, **fields)  # type: ignore[arg-type]


# -- the matcher alone ---------------------------------------------------------


def test_matcher_pairs_two_agents_and_leaves_nothing_pending() -> None:  # A13/A14
    m = ResumeMatcher(30.0)
    a, b = _half(1, "A", 100, 50), _half(2, "B", 50, 100)
    assert m.submit(a, 0.0) == [] and len(m) == 1
    assert m.next_deadline() == 30.0
    assert m.submit(b, 5.0) == [HalvesMatched(a, b)]
    assert len(m) == 0 and m.next_deadline() is None
    assert m.expire(100.0) == []


def test_matcher_times_out_a_lone_half() -> None:  # A15
    m = ResumeMatcher(30.0)
    a = _half(1, "A")
    m.submit(a, 0.0)
    assert m.expire(29.999) == []
    assert m.expire(30.0) == [HalfExpired(a)]
    assert len(m) == 0


def test_matcher_same_agent_replaces_instead_of_pairing() -> None:
    m = ResumeMatcher(30.0)
    first, again = _half(1, "A"), _half(2, "A")
    m.submit(first, 0.0)
    events = m.submit(again, 10.0)
    assert len(events) == 1 and isinstance(events[0], HalfRefused)
    assert events[0].half == first and events[0].error.code == 409
    assert len(m) == 1 and m.next_deadline() == 40.0  # a fresh window for the new one
    b = _half(3, "B")
    assert m.submit(b, 11.0) == [HalvesMatched(again, b)]


def test_matcher_tenants_never_meet() -> None:
    m = ResumeMatcher(30.0)
    assert m.submit(_half(1, "A", tenant="acme"), 0.0) == []
    assert m.submit(_half(2, "B", tenant="other"), 0.0) == []
    assert len(m) == 2


def test_matcher_refuses_strangers_when_parties_known() -> None:
    m = ResumeMatcher(30.0)
    m.remember("acme", SID, "A", "B", 0.0)
    events = m.submit(_half(1, "C"), 1.0)
    assert isinstance(events[0], HalfRefused) and events[0].error.code == 403
    assert m.submit(_half(2, "A"), 1.0) == []
    # explicit (live) parties win over history
    events = m.submit(_half(3, "B"), 2.0, parties=frozenset({"A", "X"}))
    assert isinstance(events[0], HalfRefused)
    # history is forgotten after the window: then anyone of the tenant may pair
    assert m.parties("acme", SID, 30.0) is None


def test_matcher_refuses_stream_id_zero_and_withdraws() -> None:
    m = ResumeMatcher(30.0)
    events = m.submit(_half(1, "A", stream_id=0), 0.0)
    assert isinstance(events[0], HalfRefused) and events[0].error.code == 409
    a = _half(2, "A")
    m.submit(a, 0.0)
    assert m.withdraw(2) == a and len(m) == 0 and m.withdraw(2) is None


# -- inside the core -----------------------------------------------------------


def _resume(w: World, conn: int, stream: int, my: int, ack: int, sid: int = SID) -> None:
    msg = orp_pb2.StreamResume(stream_id=sid, my_position=my, peer_ack_position=ack)
    w.data(conn, stream, frame(FrameType.STREAM_RESUME, msg))


def _echo(w: World, conn: int, stream: int) -> tuple[int, int, int]:
    frames = w.frames(conn, stream)
    assert [f.type for f in frames] == [FrameType.STREAM_RESUME], frames
    msg = orp_pb2.StreamResume.FromString(frames[0].payload)
    return msg.stream_id, msg.my_position, msg.peer_ack_position


def test_core_match_writes_both_echoes_then_one_splice() -> None:  # A16
    w = World()
    aconn, _ = w.agent()
    bconn, _ = w.agent()
    _resume(w, aconn, 4, 100, 50)
    w.data(aconn, 4, b"early-from-a")  # before the echo: held, spliced after it
    assert not w.sent[(aconn, 4)] and not w.splices
    assert w.metrics.gauge("resume_pending").value == 1
    _resume(w, bconn, 4, 80, 70)
    assert _echo(w, aconn, 4) == (SID, 80, 70)
    assert _echo(w, bconn, 4) == (SID, 100, 50)
    assert len(w.splices) == 1  # the reference starts two
    splice = w.splices[0]
    assert {(splice.a.conn, splice.a.stream), (splice.b.conn, splice.b.stream)} == {
        (aconn, 4),
        (bconn, 4),
    }
    legs = {splice.a.conn: splice.a, splice.b.conn: splice.b}
    assert legs[aconn].pending == b"early-from-a"
    # the echoes' acknowledgements are not credit for the other leg
    assert legs[aconn].unacked == len(w.sent[(aconn, 4)])
    assert legs[bconn].unacked == len(w.sent[(bconn, 4)])
    assert w.metrics.counter("resume_matched").value == 1
    assert w.metrics.gauge("resume_pending").value == 0
    assert w.core.flows == 1 and w.metrics.gauge("stream_active").value == 1
    w.apply(w.core.splice_ended(splice.flow))
    assert w.core.flows == 0 and w.metrics.gauge("stream_active").value == 0


def test_core_echo_order_precedes_splice_in_actions() -> None:
    w = World()
    aconn, _ = w.agent()
    bconn, _ = w.agent()
    _resume(w, aconn, 4, 1, 2)
    msg = orp_pb2.StreamResume(stream_id=SID, my_position=3, peer_ack_position=4)
    actions = w.core.stream_data(bconn, 4, frame(FrameType.STREAM_RESUME, msg))
    kinds = [type(a).__name__ for a in actions]
    assert kinds.count("StartSplice") == 1
    assert kinds.index("StartSplice") == len(kinds) - 1
    assert kinds.count("Send") == 2


def test_core_timeout_rejects_and_counts() -> None:  # A15 / B23 (with a frame)
    w = World()
    aconn, _ = w.agent()
    _resume(w, aconn, 4, 10, 20)
    assert w.core.next_deadline() == w.now + 30.0
    w.now += 29.0
    w.apply(w.core.timer())
    assert not w.sent[(aconn, 4)]
    w.now += 1.0
    w.apply(w.core.timer())
    code, reason = w.reject_of(aconn, 4)
    assert code == 504 and "resume" in reason
    assert (aconn, 4) in w.stopped
    assert w.metrics.counter("resume_timeouts").value == 1
    assert w.core.next_deadline() is None and w.core.flows == 0


def test_core_same_agent_halves_not_paired() -> None:
    w = World()
    aconn, _ = w.agent()
    _resume(w, aconn, 4, 1, 1)
    _resume(w, aconn, 8, 2, 2)
    assert not w.splices
    code, reason = w.reject_of(aconn, 4)  # the older half gave way
    assert code == 409 and "superseded" in reason
    assert not w.sent[(aconn, 8)]
    bconn, _ = w.agent()
    _resume(w, bconn, 4, 3, 3)
    assert _echo(w, aconn, 8) == (SID, 3, 3) and len(w.splices) == 1


def test_core_other_tenant_never_pairs() -> None:
    w = World()
    aconn, _ = w.agent("acme")
    bconn, _ = w.agent("other")
    _resume(w, aconn, 4, 1, 1)
    _resume(w, bconn, 4, 1, 1)
    assert not w.splices and w.core.flows == 2


def _accept(w: World, pconn: int) -> int:
    sid = w.opened[pconn][-1]
    w.data(pconn, sid, frame(FrameType.STREAM_ACCEPT))
    return sid


def test_core_known_pair_refuses_a_third_agent_and_routes_checkpoints() -> None:
    w = World()
    pconn, puri = w.provider("svc")
    cconn, curi = w.agent()
    w.open(cconn, 4, "svc", stream_id=SID)
    psid = _accept(w, pconn)
    original = w.splices[-1]
    # the consumer's connection dies: the splice ends, the relay remembers the pair
    w.apply(w.core.splice_ended(original.flow))
    w.apply(w.core.connection_closed(cconn))
    stranger, _ = w.agent()
    _resume(w, stranger, 4, 0, 0)
    code, _ = w.reject_of(stranger, 4)
    assert code == 403 and w.metrics.counter("resume_refused").value == 1
    # the consumer comes back on a new connection, the provider resumes too
    c2, _ = w.connect(curi)
    w.hello(c2, curi)
    _resume(w, c2, 4, 7, 5)
    _resume(w, pconn, psid + 4 - 1, 5, 7)  # a fresh client stream id on the provider
    assert len(w.splices) == 2
    ckpt = frame(
        FrameType.STREAM_CHECKPOINT,
        orp_pb2.StreamCheckpoint(stream_id=SID, my_position=9, peer_ack_position=9),
    )
    w.data(c2, 0, ckpt)
    assert bytes(w.sent[(pconn, 0)]).endswith(ckpt)  # payload verbatim to the peer
    w.data(pconn, 0, ckpt)
    assert bytes(w.sent[(c2, 0)]).endswith(ckpt)
    w.apply(w.core.splice_ended(w.splices[-1].flow))
    before = bytes(w.sent[(pconn, 0)])
    w.data(c2, 0, ckpt)
    assert bytes(w.sent[(pconn, 0)]) == before  # pair gone with the splice


def test_core_pending_half_withdrawn_when_its_connection_closes() -> None:
    w = World()
    aconn, _ = w.agent()
    _resume(w, aconn, 4, 1, 1)
    w.apply(w.core.connection_closed(aconn))
    assert w.core.next_deadline() is None
    bconn, _ = w.agent()
    _resume(w, bconn, 4, 1, 1)
    assert not w.splices  # nobody to pair with: it waits


def test_core_migrate_to_relay_pairs_without_echo() -> None:  # A17
    w = World()
    aconn, _ = w.agent()
    bconn, _ = w.agent()
    mig = orp_pb2.MigrateToRelay(stream_id=0xC0FFEE, my_position=100, peer_ack_position=80)
    w.data(aconn, 4, frame(FrameType.MIGRATE_TO_RELAY, mig))
    _resume(w, bconn, 4, 80, 100, sid=0xC0FFEE)
    assert not w.sent[(aconn, 4)]  # MIGRATE_TO_RELAY half: no echo
    assert _echo(w, bconn, 4) == (0xC0FFEE, 100, 80)
    assert len(w.splices) == 1 and isinstance(w.splices[0], StartSplice)
    legs = {w.splices[0].a.conn: w.splices[0].a, w.splices[0].b.conn: w.splices[0].b}
    assert legs[aconn].unacked == 0 and legs[bconn].unacked == len(w.sent[(bconn, 4)])


def test_core_undecodable_resume_closes_and_id_zero_is_refused() -> None:
    w = World()
    aconn, _ = w.agent()
    w.data(aconn, 4, frame(FrameType.STREAM_RESUME))  # empty payload: stream id 0
    assert w.reject_of(aconn, 4)[0] == 409
    w.data(aconn, 8, encode_frame(FrameType.STREAM_RESUME, b"\xff\xff"))
    assert (aconn, 8) in w.fin and not w.frames(aconn, 8)
    assert w.core.flows == 0


# -- controller outage in the core --------------------------------------------


def test_resolve_serves_stale_only_on_transient_error() -> None:
    w = World()
    # known to the controller only (no REGISTER on this connection), so every
    # open asks Resolve: local registrations never need it (test_core.py)
    pconn, puri = w.agent()
    w.controller.services[("acme", "svc")].append(
        registry_pb2.Provider(agent_uri=puri, relay_id=RELAY_ID)
    )
    cconn, _ = w.agent()
    w.open(cconn, 4, "svc")
    _accept(w, pconn)
    assert len(w.splices) == 1
    w.controller.fail["Resolve"] = ControllerError("down", status="UNAVAILABLE")
    w.open(cconn, 8, "svc")
    _accept(w, pconn)
    assert len(w.splices) == 2 and w.metrics.counter("resolve_stale_served").value == 1
    w.open(cconn, 12, "never-resolved")
    assert w.reject_of(cconn, 12) == (503, "controller unavailable")
    w.now += 31.0  # older than --resolve-cache-ttl: not used any more
    w.open(cconn, 16, "svc")
    assert w.reject_of(cconn, 16)[0] == 503
    w.controller.fail["Resolve"] = ControllerError("no", status="PERMISSION_DENIED")
    w.now -= 31.0
    w.open(cconn, 20, "svc")
    assert w.reject_of(cconn, 20)[0] == 503  # a real answer: no stale fallback


def test_local_provider_served_during_outage_without_resolve() -> None:
    w = World()
    w.controller.fail["RegisterService"] = ControllerError("down", status="UNAVAILABLE")
    w.controller.fail["Resolve"] = ControllerError("down", status="UNAVAILABLE")
    pconn, _ = w.provider("svc")  # acknowledged while the controller is down
    cconn, _ = w.agent()
    w.open(cconn, 4, "svc")
    _accept(w, pconn)
    assert len(w.splices) == 1
    assert not any(c.method == "Resolve" for c in w.controller.calls)


def test_register_during_outage_is_acked_and_resent() -> None:
    w = World()
    conn, uri = w.agent()
    w.controller.fail["RegisterService"] = ControllerError("down", status="UNAVAILABLE")
    w.data(conn, 0, frame(FrameType.REGISTER, orp_pb2.Register(service_name="svc", local_addr="x")))
    ack = w.frames(conn, 0)[-1]
    assert ack.type == FrameType.REGISTER_ACK
    assert orp_pb2.RegisterAck.FromString(ack.payload).service_id == "acme/svc"
    gone, gone_uri = w.agent()
    w.controller.fail["DeregisterAgent"] = ControllerError("down", status="UNAVAILABLE")
    w.apply(w.core.connection_closed(gone))
    w.controller.fail.clear()
    w.controller.calls.clear()
    w.apply(w.core.controller_back())
    sent = [(c.method, getattr(c.request, "agent_uri", "")) for c in w.controller.calls]
    assert ("DeregisterAgent", gone_uri) in sent and ("RegisterService", uri) in sent
    providers = w.controller.services[("acme", "svc")]
    assert [p.agent_uri for p in providers] == [uri]
    assert isinstance(providers[0], registry_pb2.Provider)
    w.controller.calls.clear()
    w.apply(w.core.controller_back())  # nothing left to deregister; still re-registers
    assert [c.method for c in w.controller.calls] == ["RegisterService"]
