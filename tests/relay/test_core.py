"""RelayCore in memory: handshake, control loop, OPEN_STREAM outcomes."""

from __future__ import annotations

from outrelay.orp import HEADER_SIZE, FrameType, decode_header, encode_frame
from outrelay.policy import P2PMode, PolicyEngine, Rule, Verdict
from outrelay.proto import orp_pb2, registry_pb2
from outrelay.relay.actions import Grant, OpenStream
from outrelay.relay.errors import ControllerError

from .harness import RELAY_ID, World, agent_uri, frame


def _types(world: World, conn: int, stream: int) -> list[int]:
    return [f.type for f in world.frames(conn, stream)]


# -- handshake --------------------------------------------------------------


def test_hello_gets_empty_hello_ack() -> None:
    w = World()
    conn, uri = w.connect()
    w.hello(conn, uri)
    frames = w.frames(conn, 0)
    assert [f.type for f in frames] == [FrameType.HELLO_ACK]
    assert frames[0].payload == b""
    assert w.granted[(conn, 0)] == len(w.sent[(conn, 0)]) or w.granted[(conn, 0)] > 0
    assert w.core.agent_uri(conn) == uri
    assert uri in w.core.local


def test_hello_split_across_chunks() -> None:
    w = World()
    conn, uri = w.connect()
    raw = frame(FrameType.HELLO, orp_pb2.Hello(agent_uri=uri))
    for i in range(len(raw)):
        w.data(conn, 0, raw[i : i + 1])
    assert _types(w, conn, 0) == [FrameType.HELLO_ACK]


def test_hello_uri_mismatch_closes_without_reply() -> None:
    w = World()
    conn, uri = w.connect()
    w.hello(conn, uri + "/")
    assert w.closed[conn] == "HELLO uri mismatch"
    assert not w.sent[(conn, 0)]
    assert uri not in w.core.local


def test_hello_uri_case_differs_is_refused() -> None:
    w = World()
    conn, uri = w.connect()
    w.hello(conn, uri.upper())
    assert conn in w.closed


def test_first_control_frame_not_hello_closes() -> None:
    w = World()
    conn, _ = w.connect()
    w.data(conn, 0, frame(FrameType.PING))
    assert conn in w.closed
    assert not w.sent[(conn, 0)]


def test_garbage_on_control_before_hello_closes() -> None:
    w = World()
    conn, _ = w.connect()
    w.data(conn, 0, b"\xff" * 16)
    assert conn in w.closed


def test_relay_and_admin_roles_refused() -> None:
    w = World()
    for uri in ("outrelay://us-east/relay/relay-a", "outrelay://acme/admin/ops"):
        conn, _ = w.connect(uri)
        assert conn in w.closed
    conn, _ = w.connect("https://acme/agent/x")
    assert "bad identity URI" in w.closed[conn]
    w.apply(w.core.connection_verified(99, None, None))
    assert w.closed[99] == "missing identity"
    assert w.metrics.counter("connections_refused").value == 4


def test_refused_connection_serves_no_stream() -> None:
    w = World()
    w.provider("svc")
    conn, uri = w.connect()
    w.hello(conn, "outrelay://acme/agent/" + "0" * 8 + "-0000-4000-8000-" + "0" * 12)
    w.open(conn, 4, "svc")
    assert not w.sent[(conn, 4)] and not w.splices


def test_data_stream_before_hello_waits() -> None:
    w = World()
    pconn, _ = w.provider("svc")
    conn, uri = w.connect()
    w.open(conn, 4, "svc")
    assert not w.opened[pconn]
    w.hello(conn, uri)
    assert len(w.opened[pconn]) == 1


# -- control loop -----------------------------------------------------------


def test_ping_pong_and_unknown_frames_ignored() -> None:
    w = World()
    conn, _ = w.agent()
    w.data(conn, 0, encode_frame(0x7AA, b"junk") + frame(FrameType.PING))
    frames = w.frames(conn, 0)
    assert [f.type for f in frames] == [FrameType.HELLO_ACK, FrameType.PONG]
    assert frames[-1].payload == b""


def test_register_ack_carries_service_id() -> None:
    w = World()
    conn, uri = w.agent()
    w.data(conn, 0, frame(FrameType.REGISTER, orp_pb2.Register(service_name="svc", local_addr="x")))
    ack = orp_pb2.RegisterAck.FromString(w.frames(conn, 0)[-1].payload)
    assert ack.service_id == "acme/svc"
    call = w.controller.calls[-1]
    assert call.method == "RegisterService"
    assert call.request == registry_pb2.RegisterServiceRequest(
        tenant="acme", service_name="svc", agent_uri=uri, relay_id=RELAY_ID, local_addr="x"
    )


def test_control_frames_wait_behind_pending_register() -> None:
    w = World()
    conn, _ = w.agent()
    w.controller.hold = True
    reg = frame(FrameType.REGISTER, orp_pb2.Register(service_name="svc"))
    w.data(conn, 0, reg + frame(FrameType.PING))
    w.data(conn, 0, frame(FrameType.PING))
    assert _types(w, conn, 0) == [FrameType.HELLO_ACK]
    before = w.granted[(conn, 0)]
    w.release()
    assert _types(w, conn, 0) == [
        FrameType.HELLO_ACK,
        FrameType.REGISTER_ACK,
        FrameType.PONG,
        FrameType.PONG,
    ]
    assert w.granted[(conn, 0)] > before  # held bytes granted only once read


def test_register_refused_answers_with_reject() -> None:
    w = World()
    conn, _ = w.agent()
    w.controller.fail["RegisterService"] = ControllerError("nope", status="PERMISSION_DENIED")
    w.data(conn, 0, frame(FrameType.REGISTER, orp_pb2.Register(service_name="svc")))
    frames = w.frames(conn, 0)
    assert frames[-1].type == FrameType.STREAM_REJECT
    rej = orp_pb2.StreamReject.FromString(frames[-1].payload)
    assert (rej.code, rej.reason) == (403, "register rejected: nope")
    w.controller.fail["RegisterService"] = ControllerError("boom", status="INTERNAL")
    w.data(conn, 0, frame(FrameType.REGISTER, orp_pb2.Register(service_name="svc")))
    rej = orp_pb2.StreamReject.FromString(w.frames(conn, 0)[-1].payload)
    assert rej.code == 503
    w.data(conn, 0, frame(FrameType.PING))
    assert _types(w, conn, 0)[-1] == FrameType.PONG


def test_observed_addr() -> None:
    w = World()
    conn, uri = w.connect(addr=("::ffff:127.0.0.1", 40123))
    w.hello(conn, uri)
    w.data(conn, 0, frame(FrameType.OBSERVED_ADDR_QUERY, orp_pb2.ObservedAddrQuery(request_id=42)))
    resp = orp_pb2.ObservedAddrResp.FromString(w.frames(conn, 0)[-1].payload)
    assert (resp.request_id, resp.ip, resp.port) == (42, "127.0.0.1", 40123)


def test_disconnect_deregisters() -> None:
    w = World()
    conn, uri = w.provider("svc")
    w.apply(w.core.connection_closed(conn))
    call = w.controller.calls[-1]
    assert call.method == "DeregisterAgent"
    assert call.request == registry_pb2.DeregisterAgentRequest(
        tenant="acme", agent_uri=uri, relay_id=RELAY_ID
    )
    assert uri not in w.core.local


def test_older_duplicate_connection_does_not_deregister_newer() -> None:
    w = World()
    old, uri = w.connect()
    w.hello(old, uri)
    new, _ = w.connect(uri)
    w.hello(new, uri)
    w.apply(w.core.connection_closed(old))
    assert w.controller.calls == []
    assert w.core.local.get(uri) == new


# -- OPEN_STREAM --------------------------------------------------------------


def _incoming(w: World, pconn: int, sid: int) -> tuple[orp_pb2.IncomingStream, bytes]:
    """The INCOMING_STREAM the provider got on ``sid`` and the bytes after it."""
    raw = bytes(w.sent[(pconn, sid)])
    _, ftype, _, length = decode_header(raw)
    assert ftype == FrameType.INCOMING_STREAM
    end = HEADER_SIZE + length
    return orp_pb2.IncomingStream.FromString(raw[HEADER_SIZE:end]), raw[end:]


def _accept(w: World, pconn: int, extra: bytes = b"") -> int:
    sid = w.opened[pconn][-1]
    w.data(pconn, sid, frame(FrameType.STREAM_ACCEPT) + extra)
    return sid


def test_open_stream_splices_with_stream_ready() -> None:
    w = World()
    pconn, puri = w.provider("svc-echo")
    cconn, curi = w.agent()
    w.open(cconn, 4, "svc-echo", stream_id=0xFEED, extra=b"hello via relay")
    sid = w.opened[pconn][-1]
    msg, early = _incoming(w, pconn, sid)
    assert (msg.target_service, msg.source_agent_uri, msg.stream_id) == ("svc-echo", curi, 0xFEED)
    assert not w.splices
    # early data: the consumer's bytes follow INCOMING_STREAM before any answer
    assert early == b"hello via relay"
    w.data(cconn, 4, b" more", fin=True)
    assert _incoming(w, pconn, sid)[1] == b"hello via relay more"
    assert (pconn, sid) in w.fin
    _accept(w, pconn, b"early")
    ready = orp_pb2.StreamReady(stream_id=0xFEED).SerializeToString()
    assert w.frames(cconn, 0)[-1].type == FrameType.STREAM_READY
    assert w.frames(cconn, 0)[-1].payload == ready
    assert w.frames(pconn, 0)[-1].payload == ready
    (splice,) = w.splices
    assert (splice.a.conn, splice.a.stream) == (cconn, 4)
    assert splice.a.pending == b"" and splice.a.fin
    # already forwarded, not granted: the splice grants them as the provider acks
    assert splice.a.sent == len(b"hello via relay more") and splice.a.fin_sent
    opening = orp_pb2.OpenStream(target_service="svc-echo", stream_id=0xFEED)
    assert w.granted[(cconn, 4)] == len(frame(FrameType.OPEN_STREAM, opening))
    assert (splice.b.conn, splice.b.stream) == (pconn, sid)
    assert splice.b.pending == b"early" and not splice.b.fin
    assert not w.sent[(cconn, 4)]  # no STREAM_ACCEPT forwarded to the consumer
    assert w.core.pairs.get(0xFEED) is not None
    assert w.metrics.gauge("stream_active").value == 1
    w.apply(w.core.splice_ended(splice.flow))
    assert w.core.pairs.get(0xFEED) is None
    assert w.metrics.gauge("stream_active").value == 0
    assert w.core.flows == 0


def test_early_data_rides_with_incoming_stream() -> None:
    w = World()
    pconn, _ = w.provider("svc-echo")
    cconn, _ = w.agent()
    msg = orp_pb2.OpenStream(target_service="svc-echo", stream_id=7)
    actions = w.core.stream_data(cconn, 4, frame(FrameType.OPEN_STREAM, msg) + b"Ex", fin=True)
    (open_,) = actions
    assert isinstance(open_, OpenStream)
    # one send for INCOMING_STREAM, the early bytes and the consumer's FIN
    assert open_.data.endswith(b"Ex") and open_.fin
    assert w.core.stream_opened(open_.token, 1) == []  # nothing left to forward
    assert w.metrics.counter("bytes_forwarded").value == 2
    # acknowledgements past INCOMING_STREAM grant the early bytes back
    (grant,) = w.core.stream_drained(pconn, 1, len(open_.data))
    assert isinstance(grant, Grant) and (grant.conn, grant.stream, grant.n) == (cconn, 4, 2)


def test_unknown_service_404() -> None:
    w = World()
    conn, _ = w.agent()
    w.open(conn, 4, "nope")
    assert w.reject_of(conn, 4) == (404, "service not found")
    opening = frame(FrameType.OPEN_STREAM, orp_pb2.OpenStream(target_service="nope"))
    assert w.granted[(conn, 4)] == len(opening)  # granted with the reject
    assert (conn, 4) in w.stopped
    assert w.metrics.counter("stream_rejects_404").value == 1
    assert w.core.flows == 0


def test_provider_rejects_503_and_provider_code_discarded() -> None:
    w = World()
    pconn, cconn, sid = w.open_to_provider(stream_id=7)
    w.data(pconn, sid, frame(FrameType.STREAM_REJECT, orp_pb2.StreamReject(code=404, reason="x")))
    assert w.reject_of(cconn, 4) == (503, "provider rejected")
    assert (pconn, sid) in w.fin
    assert w.core.pairs.get(7) is None


def test_provider_closes_without_answer_gives_bare_eof() -> None:
    w = World()
    pconn, cconn, sid = w.open_to_provider()
    w.data(pconn, sid, b"", fin=True)
    assert not w.sent[(cconn, 4)] and (cconn, 4) in w.fin


def test_provider_other_frame_gives_bare_eof() -> None:
    w = World()
    pconn, cconn, sid = w.open_to_provider()
    w.data(pconn, sid, frame(FrameType.PING))
    assert not w.sent[(cconn, 4)] and (cconn, 4) in w.fin


def test_collision_409_and_first_pair_untouched() -> None:
    w = World()
    pconn, puri = w.provider("svc")
    c1, c1uri = w.agent()
    c2, _ = w.agent()
    w.open(c1, 4, "svc", stream_id=0xABC)
    _accept(w, pconn)
    opened = len(w.opened[pconn])
    w.open(c2, 4, "svc", stream_id=0xABC)
    assert w.reject_of(c2, 4) == (409, "stream id collision")
    assert len(w.opened[pconn]) == opened  # the provider was not bothered
    pair = w.core.pairs.get(0xABC)
    assert pair is not None and (pair.consumer, pair.provider) == (c1uri, puri)


def test_stream_id_zero_never_collides() -> None:
    w = World()
    pconn, _ = w.provider("svc")
    c1, _ = w.agent()
    c2, _ = w.agent()
    w.open(c1, 4, "svc")
    _accept(w, pconn)
    w.open(c2, 4, "svc")
    _accept(w, pconn)
    assert len(w.splices) == 2


def test_first_frame_not_open_stream_closes_silently() -> None:
    w = World()
    conn, _ = w.agent()
    w.data(conn, 4, frame(FrameType.PING))
    assert not w.sent[(conn, 4)] and (conn, 4) in w.fin
    w.data(conn, 8, b"\x00\x00")
    w.data(conn, 8, b"", fin=True)
    assert (conn, 8) in w.fin
    assert w.metrics.gauge("stream_active").value == 0


def test_consumer_reset_before_answer_resets_provider_leg() -> None:
    w = World()
    pconn, cconn, sid = w.open_to_provider(stream_id=9)
    w.apply(w.core.stream_aborted(cconn, 4))
    assert (pconn, sid) in w.reset
    assert w.core.pairs.get(9) is None and w.core.flows == 0


def test_provider_disconnect_before_answer() -> None:
    w = World()
    pconn, _ = w.provider("svc")
    cconn, _ = w.agent()
    w.open(cconn, 4, "svc")
    w.apply(w.core.connection_closed(pconn))
    assert (cconn, 4) in w.fin and not w.sent[(cconn, 4)]
    assert w.core.flows == 0


def test_consumer_disconnect_while_resolving() -> None:
    w = World()
    _, puri = w.agent()  # a provider only the controller knows: Resolve is asked
    w.controller.services[("acme", "svc")].append(
        registry_pb2.Provider(agent_uri=puri, relay_id=RELAY_ID)
    )
    cconn, _ = w.agent()
    w.controller.hold = True
    w.open(cconn, 4, "svc")
    assert [c.method for c in w.pending_calls] == ["Resolve"]
    w.apply(w.core.connection_closed(cconn))
    w.release()
    assert w.core.flows == 0 and not w.splices


def test_resolve_controller_error_503() -> None:
    w = World()
    conn, _ = w.agent()
    w.controller.fail["Resolve"] = ControllerError("down", status="UNAVAILABLE")
    w.open(conn, 4, "svc")
    assert w.reject_of(conn, 4) == (503, "controller unavailable")


def test_remote_provider_502() -> None:
    w = World()
    w.controller.services[("acme", "svc")].append(
        registry_pb2.Provider(agent_uri=agent_uri(), relay_id="relay-other")
    )
    conn, _ = w.agent()
    w.open(conn, 4, "svc")
    assert w.reject_of(conn, 4) == (502, "inter-relay forwarding unavailable")


def test_stale_local_provider_404() -> None:
    w = World()
    w.controller.services[("acme", "svc")].append(
        registry_pb2.Provider(agent_uri=agent_uri(), relay_id=RELAY_ID)
    )
    conn, _ = w.agent()
    w.open(conn, 4, "svc")
    assert w.reject_of(conn, 4) == (404, "service not found")


def test_provider_choice_prefers_local_then_round_robin() -> None:
    w = World()
    remote = registry_pb2.Provider(agent_uri=agent_uri(), relay_id="relay-other")
    w.controller.services[("acme", "svc")].append(remote)
    p1, _ = w.provider("svc")
    p2, _ = w.provider("svc")
    c, _ = w.agent()
    for stream in (4, 8, 12, 16):
        w.open(c, stream, "svc")
    assert len(w.opened[p1]) == 2 and len(w.opened[p2]) == 2
    # local-first: the relay's own registrations answer, no Resolve at all
    assert not any(call.method == "Resolve" for call in w.controller.calls)


def test_no_local_provider_asks_the_controller() -> None:
    w = World()
    w.provider("svc", tenant="other")  # same name, another tenant: not a candidate
    p_acme, _ = w.provider("svc-b")  # same tenant, another service
    c, _ = w.agent()
    w.controller.hold = True
    w.open(c, 4, "svc")
    assert [(x.method, x.request.tenant, x.request.service_name) for x in w.pending_calls] == [
        ("Resolve", "acme", "svc")
    ]
    w.release()
    assert w.reject_of(c, 4) == (404, "service not found")
    assert not w.opened[p_acme]


def test_local_provider_gone_at_once_on_disconnect() -> None:
    w = World()
    pconn, puri = w.provider("svc")
    c, _ = w.agent()
    w.open(c, 4, "svc")
    assert len(w.opened[pconn]) == 1
    # the DeregisterAgent has not reached the controller yet: its Resolve still
    # names the provider, but the relay knows the connection is gone
    w.controller.hold = True
    w.apply(w.core.connection_closed(pconn))
    assert [x.method for x in w.pending_calls] == ["DeregisterAgent"]
    assert [p.agent_uri for p in w.controller.services[("acme", "svc")]] == [puri]
    w.open(c, 8, "svc")
    w.release()
    assert w.reject_of(c, 8) == (404, "service not found")
    assert w.core.local.providers("acme", "svc") == []


def test_refused_registration_is_not_a_local_provider() -> None:
    w = World()
    pconn, _ = w.agent()
    w.controller.fail["RegisterService"] = ControllerError("no", status="PERMISSION_DENIED")
    w.data(pconn, 0, frame(FrameType.REGISTER, orp_pb2.Register(service_name="svc")))
    assert w.frames(pconn, 0)[-1].type == FrameType.STREAM_REJECT
    c, _ = w.agent()
    w.open(c, 4, "svc")
    assert w.reject_of(c, 4) == (404, "service not found")
    assert w.controller.calls[-1].method == "Resolve"


def test_registration_refused_on_retry_is_withdrawn() -> None:
    w = World()
    w.controller.fail["RegisterService"] = ControllerError("down", status="UNAVAILABLE")
    pconn, puri = w.provider("svc")  # acknowledged, kept for later
    assert w.core.local.providers("acme", "svc") == [(puri, pconn)]
    w.controller.fail["RegisterService"] = ControllerError("no", status="PERMISSION_DENIED")
    w.apply(w.core.controller_back())
    assert w.core.local.providers("acme", "svc") == []


def test_older_session_ending_takes_only_its_registrations_newer_still_reached() -> None:
    w = World()
    old, uri = w.provider("svc")
    new, _ = w.connect(uri)
    w.hello(new, uri)
    w.apply(w.core.connection_closed(old))
    # the registration was the old session's: gone from the local index, but
    # the agent is still here, so no DeregisterAgent and the controller's row
    # (same URI, this relay) leads to the newer session
    assert w.core.local.providers("acme", "svc") == []
    assert "DeregisterAgent" not in [c.method for c in w.controller.calls]
    c, _ = w.agent()
    w.open(c, 4, "svc")
    assert len(w.opened[new]) == 1
    w.apply(w.core.connection_closed(new))
    assert w.controller.calls[-1].method == "DeregisterAgent"


def test_duplicate_session_ending_keeps_live_providers_registration() -> None:
    """Finding 5: a second session of the provider's identity says HELLO and
    goes; the first keeps its registration and nothing is deregistered."""
    w = World()
    first, uri = w.provider("svc")
    dup, _ = w.connect(uri)
    w.hello(dup, uri)
    assert w.core.local.get(uri) == dup  # the newer session takes over the identity
    assert first not in w.closed and dup not in w.closed
    w.apply(w.core.connection_closed(dup))
    assert "DeregisterAgent" not in [c.method for c in w.controller.calls]
    assert w.core.local.providers("acme", "svc") == [(uri, first)]
    assert w.core.local.get(uri) == first
    c, _ = w.agent()
    w.open(c, 4, "svc")
    assert len(w.opened[first]) == 1


def test_newer_session_registration_preferred_and_kept_when_older_ends() -> None:
    w = World()
    old, uri = w.provider("svc")
    new, _ = w.connect(uri)
    w.hello(new, uri)
    w.data(new, 0, frame(FrameType.REGISTER, orp_pb2.Register(service_name="svc")))
    assert w.core.local.providers("acme", "svc") == [(uri, new)]
    w.apply(w.core.connection_closed(old))
    assert w.core.local.providers("acme", "svc") == [(uri, new)]
    assert "DeregisterAgent" not in [c.method for c in w.controller.calls]


def test_too_many_sessions_of_one_identity_close_the_oldest_as_superseded() -> None:
    from outrelay.relay.registry import MAX_SESSIONS_PER_AGENT

    w = World()
    first, uri = w.provider("svc")
    conns = [first]
    for _ in range(MAX_SESSIONS_PER_AGENT):
        conn, _ = w.connect(uri)
        w.hello(conn, uri)
        conns.append(conn)
    assert w.closed == {first: "superseded by a newer session"}
    w.apply(w.core.connection_closed(first))
    assert "DeregisterAgent" not in [c.method for c in w.controller.calls]
    assert w.core.local.sessions(uri) == conns[1:]


def test_registration_racing_a_deregistration_is_sent_again() -> None:
    w = World()
    old, uri = w.provider("svc")
    w.controller.hold = True
    w.apply(w.core.connection_closed(old))  # last session: DeregisterAgent (held)
    new, _ = w.connect(uri)
    w.hello(new, uri)
    w.data(new, 0, frame(FrameType.REGISTER, orp_pb2.Register(service_name="svc")))
    # the controller gets RegisterService first, then the older deregistration
    register = w.pending_calls[1]
    dereg = w.pending_calls[0]
    w.pending_calls = []
    w.controller.hold = False
    w.reply(register)
    w.reply(dereg)
    assert w.controller.calls[-1].method == "RegisterService"
    assert [p.agent_uri for p in w.controller.services[("acme", "svc")]] == [uri]


def test_candidate_and_checkpoint_forwarded_between_pair() -> None:
    w = World()
    pconn, _ = w.provider("svc")
    cconn, _ = w.agent()
    w.open(cconn, 4, "svc", stream_id=0xFEEDFACE)
    _accept(w, pconn)
    offer = orp_pb2.CandidateOffer(
        stream_id=0xFEEDFACE,
        candidates=[orp_pb2.Candidate(kind="host", ip="192.0.2.1", port=30001, priority=70)],
    )
    raw = frame(FrameType.CANDIDATE_OFFER, offer)
    w.data(cconn, 0, raw)
    assert bytes(w.sent[(pconn, 0)]).endswith(raw)
    ckpt = frame(
        FrameType.STREAM_CHECKPOINT,
        orp_pb2.StreamCheckpoint(stream_id=0xFEEDFACE, my_position=4096, peer_ack_position=1024),
    )
    w.data(pconn, 0, ckpt)
    assert bytes(w.sent[(cconn, 0)]).endswith(ckpt)
    before = bytes(w.sent[(pconn, 0)])
    w.data(cconn, 0, frame(FrameType.CANDIDATE_OFFER, orp_pb2.CandidateOffer(stream_id=1)))
    assert bytes(w.sent[(pconn, 0)]) == before  # unknown id: dropped


# -- policy -------------------------------------------------------------------


def _allow_all() -> Rule:
    return Rule("allow-all", "acme", "*", "*")


def test_policy_allow_emits_two_audit_events() -> None:
    w = World(PolicyEngine([_allow_all()]))
    pconn, puri = w.provider("svc")
    cconn, curi = w.agent()
    w.open(cconn, 4, "svc")
    _accept(w, pconn)
    assert len(w.splices) == 1
    assert w.audit is not None
    events = w.audit.take()
    assert [(e.caller, e.target, e.reason) for e in events] == [
        (curi, "svc", "allow-all"),
        (puri, curi, "allow-all"),
    ]
    assert all(e.tenant == "acme" for e in events)


def test_caller_side_deny_403_one_audit_event() -> None:
    w = World(
        PolicyEngine(
            [Rule("deny-svc", "acme", "*", "svc-deny", verdict=Verdict.DENY), _allow_all()]
        )
    )
    w.provider("svc-deny")
    cconn, _ = w.agent()
    w.open(cconn, 4, "svc-deny")
    assert w.reject_of(cconn, 4) == (403, "denied: deny-svc")
    assert w.audit is not None and len(w.audit.take()) == 1
    assert not any(c.method == "Resolve" for c in w.controller.calls)


def test_no_rule_denies() -> None:
    w = World(PolicyEngine())
    cconn, _ = w.agent()
    w.open(cconn, 4, "svc")
    assert w.reject_of(cconn, 4) == (403, "denied: no matching rule")


def test_callee_side_deny_403() -> None:
    w = World(PolicyEngine([_allow_all()]))
    pconn, puri = w.provider("svc")
    cconn, curi = w.agent()
    w.core.policy.add(Rule("callee-deny", "acme", puri, curi, verdict=Verdict.DENY))  # type: ignore[union-attr]
    w.core.policy_changed()
    w.open(cconn, 4, "svc")
    assert w.reject_of(cconn, 4) == (403, "denied (callee): callee-deny")
    assert not w.opened[pconn]  # the provider received nothing
    assert w.audit is not None and len(w.audit.take()) == 2


def test_cache_hits_and_flush_on_change() -> None:
    engine = PolicyEngine([_allow_all()])
    w = World(engine)
    pconn, _ = w.provider("svc")
    cconn, _ = w.agent()
    w.open(cconn, 4, "svc")
    w.open(cconn, 8, "svc")
    assert w.metrics.counter("policy_cache_misses").value == 2
    assert w.metrics.counter("policy_cache_hits").value == 2
    engine.remove("allow-all")
    w.core.policy_changed()
    w.open(cconn, 12, "svc")
    assert w.reject_of(cconn, 12) == (403, "denied: no matching rule")


def test_p2p_modes_combine() -> None:
    w = World(
        PolicyEngine([Rule("req", "acme", "*", "svc", p2p_mode=P2PMode.REQUIRED), _allow_all()])
    )
    pconn, _ = w.provider("svc")
    cconn, _ = w.agent()
    w.open(cconn, 4, "svc")
    flow = next(iter(w.core._flows.values()))
    assert flow.p2p_mode is P2PMode.REQUIRED


def test_audit_queue_full_counts_drops() -> None:
    w = World(PolicyEngine(), audit_depth=1)
    cconn, _ = w.agent()
    w.open(cconn, 4, "svc")
    w.open(cconn, 8, "svc")
    assert w.metrics.counter("audit_dropped").value == 1
    assert w.audit is not None and len(w.audit) == 1


# -- early data ---------------------------------------------------------------


def test_early_data_follows_incoming_stream_and_credit_follows_acks() -> None:
    w = World()
    pconn, _ = w.provider("svc")
    cconn, _ = w.agent()
    w.controller.fail["Resolve"] = ControllerError("unused", status="INTERNAL")
    w.open(cconn, 4, "svc", stream_id=5, extra=b"abc")
    sid = w.opened[pconn][-1]
    opening = w.granted[(cconn, 4)]
    assert opening == 0  # even OPEN_STREAM's bytes are granted with the answer
    assert _incoming(w, pconn, sid)[1] == b"abc"
    w.data(cconn, 4, b"defg")
    assert _incoming(w, pconn, sid)[1] == b"abcdefg"
    assert w.granted[(cconn, 4)] == opening  # nothing granted before the provider acks
    incoming_len = len(w.sent[(pconn, sid)]) - 7
    # the INCOMING_STREAM frame's acknowledgement is no credit for the consumer
    w.apply(w.core.stream_drained(pconn, sid, incoming_len + 2))
    assert w.granted[(cconn, 4)] == opening + 2
    w.apply(w.core.stream_drained(pconn, sid, 100))  # capped at what was forwarded
    assert w.granted[(cconn, 4)] == opening + 7
    assert w.core.stream_drained(cconn, 4, 10) == []  # not the provider's stream
    assert w.core.stream_drained(cconn, 0, 10) == []  # a control stream
    w.data(cconn, 4, b"hi")
    _accept(w, pconn)
    (splice,) = w.splices
    assert splice.a.sent == 2 and not splice.a.fin_sent and splice.b.unacked == 0


def test_early_data_unacked_incoming_stream_goes_to_the_splice() -> None:
    w = World()
    pconn, cconn, sid = w.open_to_provider(extra=b"xyz")
    w.apply(w.core.stream_drained(pconn, sid, 10))
    _accept(w, pconn, b"resp")
    (splice,) = w.splices
    assert splice.a.sent == 3 and splice.a.pending == b""
    assert splice.b.unacked == len(w.sent[(pconn, sid)]) - 3 - 10
    assert splice.b.pending == b"resp"


def test_early_data_waits_while_resolving() -> None:
    w = World()
    _, puri = w.agent()
    w.controller.services[("acme", "svc")].append(
        registry_pb2.Provider(agent_uri=puri, relay_id=RELAY_ID)
    )
    pconn = w.core.local.get(puri)
    assert pconn is not None
    cconn, _ = w.agent()
    w.controller.hold = True
    w.open(cconn, 4, "svc", extra=b"one ")
    w.data(cconn, 4, b"two", fin=True)
    assert not w.opened[pconn]
    w.release()
    sid = w.opened[pconn][-1]
    assert _incoming(w, pconn, sid)[1] == b"one two"
    assert (pconn, sid) in w.fin


def test_early_data_then_provider_rejects() -> None:
    w = World()
    pconn, cconn, sid = w.open_to_provider(stream_id=3, extra=b"early")
    w.data(cconn, 4, b"", fin=True)
    assert (pconn, sid) in w.fin  # the consumer's FIN went out as early data
    reject = frame(FrameType.STREAM_REJECT, orp_pb2.StreamReject(code=502, reason="dial"))
    w.data(pconn, sid, reject)  # the harness refuses a second FIN on the stream
    assert w.frames(cconn, 4)[0].type == FrameType.STREAM_REJECT
    assert len(w.frames(cconn, 4)) == 1 and (cconn, 4) in w.fin
    assert w.reject_of(cconn, 4) == (503, "provider rejected")
    assert (pconn, sid) in w.stopped and (cconn, 4) not in w.stopped
    assert w.core.flows == 0 and not w.splices


def test_early_data_without_fin_then_provider_rejects() -> None:
    w = World()
    pconn, cconn, sid = w.open_to_provider(extra=b"early")
    assert (pconn, sid) not in w.fin
    w.data(pconn, sid, frame(FrameType.STREAM_REJECT, orp_pb2.StreamReject(code=404)))
    assert w.reject_of(cconn, 4) == (503, "provider rejected")
    assert (pconn, sid) in w.fin and (cconn, 4) in w.stopped
    assert _incoming(w, pconn, sid)[1] == b"early"
