"""OrpConnection in memory: verification gate, fixed windows, send-buffer reports."""

from __future__ import annotations

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from outrelay.identity import Role
from outrelay.transport import (
    CRYPTO_ERROR_BASE,
    ConnectionClosed,
    HandshakeVerified,
    MiB,
    OrpConnection,
    SendCapacityAvailable,
    StreamClosedError,
    StreamDataReceived,
    StreamReset,
    TransportConfig,
)
from outrelay.transport._aioquic_internals import LONE_ACK_DELAY

from .conftest import PKI
from .pair import CLIENT_ADDR, SERVER_ADDR, Pair

pytestmark = pytest.mark.dataplane


def _verified(pair: Pair) -> bool:
    return pair.client.verified and pair.server.verified


def _of(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def _received(events: list, stream_id: int) -> int:
    return sum(len(e.data) for e in _of(events, StreamDataReceived) if e.stream_id == stream_id)


def _quiesce(pair: Pair, seconds: float = 2.0) -> None:
    start = pair.now
    while pair.now - start < seconds:
        if not pair.step():
            pair.advance()


def _deliver(pair: Pair, sender: str) -> int:
    """Move what ``sender`` has to send to the other side now; the datagram count."""
    src = pair.client if sender == "client" else pair.server
    dst, addr = (pair.server, CLIENT_ADDR) if sender == "client" else (pair.client, SERVER_ADDR)
    datagrams = src.datagrams_to_send(pair.now)
    for data, _ in datagrams:
        dst.receive_datagram(data, addr, pair.now)
    return len(datagrams)


def _fire(conn: OrpConnection, now: float) -> None:
    """Run ``conn``'s timer if it is due at ``now``."""
    timer = conn.get_timer()
    if timer is not None and timer <= now:
        conn.handle_timer(now)


def _quiet_pair(pki: PKI) -> Pair:
    """A verified pair after 100 ms of pumping: nothing left from the handshake to send."""
    pair = Pair(pki.client_config(), pki.server_config())
    pair.run(lambda: _verified(pair))
    _quiesce(pair, 0.1)
    return pair


def test_handshake_verifies_both_sides_and_reads_identity(pki: PKI) -> None:
    pair = Pair(pki.client_config(), pki.server_config())
    pair.run(lambda: _verified(pair))
    (server_side,) = _of(pair.server_events, HandshakeVerified)
    assert server_side.peer_uri == pki.client.uri
    assert server_side.peer_cert == pki.client.cert
    assert server_side.peer_chain[-1] == pki.ca.cert
    assert server_side.alpn == "orp/1"
    (client_side,) = _of(pair.client_events, HandshakeVerified)
    assert client_side.peer_uri == "outrelay://eu/relay/r1"


def test_client_event_waits_for_server_confirmation(pki: PKI) -> None:
    pair = Pair(pki.client_config(), pki.server_config())
    # The client completes TLS one flight before the server accepts it.
    pair.run(lambda: pair.server.verified)
    assert pair.client.verified is False or _of(pair.client_events, HandshakeVerified)
    pair.run(lambda: pair.client.verified)


@pytest.mark.parametrize(
    ("case", "alert"),
    [
        ("no_cert", 116),
        ("self_signed", 48),
        ("other_ca", 48),
        ("expired", 45),
        ("no_client_auth", 43),
        ("no_uri", 42),
    ],
)
def test_bad_client_refused_before_any_stream(pki: PKI, case: str, alert: int) -> None:
    pair = Pair(pki.bad_client_config(case), pki.server_config())
    # A hostile client pushes stream data as soon as its own TLS side is done,
    # without waiting for confirmation.
    sent = False

    def push() -> bool:
        nonlocal sent
        if not sent and pair.client._quic._handshake_complete:
            pair.client._quic.send_stream_data(0, b"let me in", end_stream=True)
            sent = True
        return pair.client.closed and pair.server.closed

    pair.run(push)
    assert sent
    assert not _of(pair.server_events, HandshakeVerified)
    assert not _of(pair.server_events, StreamDataReceived)
    assert not _of(pair.client_events, HandshakeVerified)
    (closed,) = _of(pair.client_events, ConnectionClosed)
    assert closed.error_code == CRYPTO_ERROR_BASE + alert
    assert closed.by_us is False
    assert closed.reason
    (server_closed,) = _of(pair.server_events, ConnectionClosed)
    assert server_closed.by_us is True


def test_receive_window_stays_fixed_until_granted(pki: PKI) -> None:
    window = 256 * 1024
    pair = Pair(pki.client_config(stream_window=window), pki.server_config(stream_window=window))
    pair.run(lambda: _verified(pair))
    sid = pair.client.open_stream()
    pair.client.send(sid, b"x" * (4 * window))
    pair.run(lambda: _received(pair.server_events, sid) >= window)
    _quiesce(pair)  # more time must not bring more data: the window does not double
    assert _received(pair.server_events, sid) == window
    assert pair.server.unconsumed(sid) == window
    assert pair.server.receive_limits(sid)[0] == window
    assert pair.client.send_buffered(sid) == 3 * window

    assert pair.server.grant(sid, 10 * window) == window  # clamped to what was delivered
    pair.run(lambda: _received(pair.server_events, sid) == 2 * window)
    assert pair.server.receive_limits(sid)[0] == 2 * window


def test_connection_window_bounds_all_streams(pki: PKI) -> None:
    server_cfg = pki.server_config(stream_window=MiB, connection_window=MiB + MiB // 2)
    pair = Pair(pki.client_config(), server_cfg)
    pair.run(lambda: _verified(pair))
    sids = [pair.client.open_stream() for _ in range(3)]
    for sid in sids:
        pair.client.send(sid, b"y" * MiB)
    pair.run(lambda: sum(_received(pair.server_events, s) for s in sids) >= MiB + MiB // 2)
    _quiesce(pair)
    total = sum(_received(pair.server_events, sid) for sid in sids)
    assert total == MiB + MiB // 2
    assert pair.server.receive_limits(sids[0])[1] == MiB + MiB // 2
    for sid in sids:
        pair.server.grant(sid, pair.server.unconsumed(sid))
    pair.run(lambda: sum(_received(pair.server_events, s) for s in sids) == 3 * MiB)


def test_credit_is_advertised_when_half_a_window_is_left(pki: PKI) -> None:
    # Many small grants, few MAX_STREAM_DATA / MAX_DATA frames: the advertised
    # limit catches up with the grants only once the peer has less than half
    # a window of credit left, and never exceeds consumed + window.
    window, conn_window = 64 * 1024, 256 * 1024
    server_cfg = pki.server_config(stream_window=window, connection_window=conn_window)
    pair = Pair(pki.client_config(), server_cfg)
    pair.run(lambda: _verified(pair))
    sid = pair.client.open_stream()
    granted = 0
    stream_limits, data_limits = set(), set()
    for i in range(1, 41):  # 40 x 4 KiB: 2.5 stream windows
        pair.client.send(sid, b"c" * 4096)
        pair.run(lambda i=i: _received(pair.server_events, sid) == i * 4096)
        granted += pair.server.grant(sid, pair.server.unconsumed(sid))
        pair.step()  # the server builds a packet: the point where limits move
        stream_limit, data_limit = pair.server.receive_limits(sid)
        assert stream_limit is not None
        assert stream_limit <= granted + window
        assert data_limit <= granted + conn_window
        # Credit left to the peer stays at half a window or more.
        assert 2 * (stream_limit - granted) >= window
        assert 2 * (data_limit - granted) >= conn_window
        stream_limits.add(stream_limit)
        data_limits.add(data_limit)
    # Each update lands as the peer's data crosses half a window, before the
    # crossing chunk itself is granted: 4 MAX_STREAM_DATA, 1 MAX_DATA for 40 grants.
    assert sorted(stream_limits) == [window + k * window // 2 for k in range(5)]
    assert sorted(data_limits) == [conn_window, conn_window + conn_window // 2]


def test_reply_carries_the_ack(pki: PKI) -> None:
    # A reply sent right away takes the ACK of what it answers with it: no
    # ACK-only packet follows after aioquic's 1 ms ACK delay.
    pair = _quiet_pair(pki)
    sid = pair.client.open_stream()
    pair.client.send(sid, b"ping")
    _deliver(pair, "client")
    pair.server.send(sid, b"pong")
    (reply,) = pair.server.datagrams_to_send(pair.now)
    pair.client.receive_datagram(reply[0], SERVER_ADDR, pair.now)
    pair.now += 0.005
    _fire(pair.server, pair.now)
    assert pair.server.datagrams_to_send(pair.now) == []


def test_lone_packet_ack_waits_for_the_next_packet(pki: PKI) -> None:
    # A lone ack-eliciting packet is acknowledged within LONE_ACK_DELAY, not
    # after 1 ms: the next packet the receiver sends anyway carries the ACK.
    pair = _quiet_pair(pki)
    sid = pair.client.open_stream()
    pair.client.send(sid, b"signal")
    assert _deliver(pair, "client") == 1
    pair.now += 0.005
    _fire(pair.server, pair.now)
    assert pair.server.datagrams_to_send(pair.now) == []  # no ACK-only packet yet
    pair.server.send(sid, b"later reply")
    assert _deliver(pair, "server") == 1
    assert pair.client.send_buffered(sid) == 0  # the reply acknowledged "signal"
    pair.now += LONE_ACK_DELAY
    _fire(pair.server, pair.now)
    assert pair.server.datagrams_to_send(pair.now) == []


def test_lone_packet_ack_goes_alone_by_the_deadline(pki: PKI) -> None:
    pair = _quiet_pair(pki)
    sid = pair.client.open_stream()
    pair.client.send(sid, b"signal")
    _deliver(pair, "client")
    timer = pair.server.get_timer()
    assert timer is not None and timer <= pair.now + LONE_ACK_DELAY
    pair.now += LONE_ACK_DELAY
    _fire(pair.server, pair.now)
    assert _deliver(pair, "server") == 1
    assert pair.client.send_buffered(sid) == 0


def test_second_packet_brings_the_ack_back_to_1ms(pki: PKI) -> None:
    # Two ack-eliciting packets: acknowledged as aioquic does, after 1 ms (so
    # a bulk sender's window keeps moving as before).
    pair = _quiet_pair(pki)
    sid = pair.client.open_stream()
    for chunk in (b"one", b"two"):
        pair.client.send(sid, chunk)
        assert _deliver(pair, "client") == 1
    pair.now += 0.001
    _fire(pair.server, pair.now)
    assert _deliver(pair, "server") == 1
    assert pair.client.send_buffered(sid) == 0


def test_send_capacity_reports_acknowledged_bytes(pki: PKI) -> None:
    pair = Pair(pki.client_config(), pki.server_config())
    pair.run(lambda: _verified(pair))
    sid = pair.client.open_stream()
    pair.client.send(sid, b"z" * 100_000, end_stream=True)
    assert pair.client.send_buffered(sid) == 100_000
    pair.run(lambda: pair.client.send_buffered(sid) == 0)
    drained = _of(pair.client_events, SendCapacityAvailable)
    assert sum(e.drained for e in drained) == 100_000
    assert drained[-1].buffered == 0


def test_reset_returns_connection_credit(pki: PKI) -> None:
    server_cfg = pki.server_config(stream_window=MiB, connection_window=MiB)
    pair = Pair(pki.client_config(), server_cfg)
    pair.run(lambda: _verified(pair))
    first = pair.client.open_stream()
    pair.client.send(first, b"a" * MiB)
    pair.run(lambda: _received(pair.server_events, first) == MiB)
    pair.client.reset_stream(first, 7)
    pair.run(lambda: bool(_of(pair.server_events, StreamReset)))
    assert _of(pair.server_events, StreamReset)[0].error_code == 7
    # Never granted, but the reset gave the connection credit back.
    second = pair.client.open_stream()
    pair.client.send(second, b"b" * 1000)
    pair.run(lambda: _received(pair.server_events, second) == 1000)
    with pytest.raises(StreamClosedError):
        pair.client.send(first, b"more")


def test_keepalive_outlives_idle_timeout(pki: PKI) -> None:
    pair = Pair(
        pki.client_config(idle_timeout=1.0, keepalive=0.3),
        pki.server_config(idle_timeout=1.0, keepalive=0.3),
    )
    pair.run(lambda: _verified(pair))
    start = pair.now
    pair.run(lambda: pair.now - start > 5.0)
    assert not pair.client.closed and not pair.server.closed


def test_idle_timeout_without_keepalive(pki: PKI) -> None:
    pair = Pair(
        pki.client_config(idle_timeout=1.0, keepalive=0),
        pki.server_config(idle_timeout=1.0, keepalive=0),
    )
    pair.run(lambda: _verified(pair))
    start = pair.now
    pair.run(lambda: pair.client.closed and pair.server.closed)
    assert 0.9 < pair.now - start < 2.0
    (closed,) = _of(pair.client_events, ConnectionClosed)
    assert "Idle timeout" in closed.reason


def test_peer_stream_credit_is_max_streams_and_streams_available_counts_it(pki: PKI) -> None:
    """The server (a relay) sees how many streams the client (a provider) still
    allows: the client's ``max_streams``; a stream that ends gives one back."""
    from dataclasses import replace

    pair = Pair(replace(pki.client_config(), max_streams=3), pki.server_config())
    pair.run(lambda: _verified(pair))
    assert pair.server.streams_available() == 3
    assert pair.client.streams_available() == 1024  # the default, not aioquic's 128
    ids = [pair.server.open_stream() for _ in range(3)]
    assert pair.server.streams_available() == 0
    for sid in ids:
        pair.server.send(sid, b"x", end_stream=True)
    _quiesce(pair, 0.2)
    for sid in ids:
        pair.client.grant(sid, 1)
        pair.client.send(sid, b"", end_stream=True)
    pair.run(lambda: pair.server.streams_available() > 0)
    assert pair.server.streams_available() >= 1


# -- role checks (issue 12, finding 1) --------------------------------------------

RELAY_ONLY = frozenset({Role.RELAY})
AGENT_ONLY = frozenset({Role.AGENT})


def _refused(pair: Pair, refusing: OrpConnection) -> str:
    """Run until both sides closed; the refusing side's (local, full) reason."""
    pair.run(lambda: pair.client.closed and pair.server.closed)
    events = pair.client_events if refusing is pair.client else pair.server_events
    (closed,) = _of(events, ConnectionClosed)
    assert closed.by_us is True
    assert closed.error_code == CRYPTO_ERROR_BASE + 49  # access_denied
    return closed.reason


def test_agent_side_refuses_a_server_holding_an_agent_leaf(pki: PKI) -> None:
    """An old-profile agent leaf (serverAuth, DNS:localhost) passes every TLS check
    but is not a relay: refused before the client application sees anything."""
    impostor = pki.ca.build(
        "impostor", uri="outrelay://acme/agent/00000000-0000-0000-0000-0000000000aa"
    )
    server = TransportConfig(cert=impostor.cert_path, key=impostor.key_path, ca=pki.ca.cert_path)
    pair = Pair(pki.client_config(peer_roles=RELAY_ONLY), server)
    reason = _refused(pair, pair.client)
    assert "expected a relay identity (outrelay://<region>/relay/<id>)" in reason
    assert f"presented {impostor.uri} (agent role)" in reason
    assert not _of(pair.client_events, HandshakeVerified)
    assert not _of(pair.server_events, StreamDataReceived)
    (server_closed,) = _of(pair.server_events, ConnectionClosed)
    assert server_closed.error_code == CRYPTO_ERROR_BASE + 49


def test_agent_side_accepts_a_relay_and_checks_the_pin(pki: PKI) -> None:
    good = Pair(
        pki.client_config(peer_roles=RELAY_ONLY, peer_uri="outrelay://eu/relay/r1"),
        pki.server_config(),
    )
    good.run(lambda: _verified(good))
    pinned = pki.client_config(peer_roles=RELAY_ONLY, peer_uri="outrelay://eu/relay/r2")
    pair = Pair(pinned, pki.server_config())
    reason = _refused(pair, pair.client)
    assert reason == (
        "server certificate refused: expected the pinned URI outrelay://eu/relay/r2; "
        "the server presented outrelay://eu/relay/r1"
    )


@pytest.mark.parametrize(
    ("uri", "presented"),
    [
        ("outrelay://acme/admin/ops", "outrelay://acme/admin/ops (admin role)"),
        ("outrelay://eu/relay/r9", "outrelay://eu/relay/r9 (relay role)"),
        ("spiffe://acme/agent/x", "'spiffe://acme/agent/x', not an identity"),
    ],
)
def test_relay_side_refuses_non_agent_clients_before_any_stream(
    pki: PKI, uri: str, presented: str
) -> None:
    leaf = pki.ca.build(
        f"client-{uri.split('/')[-1]}", uri=uri, eku=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    pair = Pair(pki.client_config(leaf), pki.server_config(peer_roles=AGENT_ONLY))
    sent = False

    def push() -> bool:  # a hostile client writes as soon as its TLS side is done
        nonlocal sent
        if not sent and pair.client._quic._handshake_complete:
            pair.client._quic.send_stream_data(0, b"HELLO", end_stream=True)
            sent = True
        return pair.client.closed and pair.server.closed

    pair.run(push)
    assert sent
    assert not _of(pair.server_events, HandshakeVerified)
    assert not _of(pair.server_events, StreamDataReceived)
    (closed,) = _of(pair.server_events, ConnectionClosed)
    assert closed.error_code == CRYPTO_ERROR_BASE + 49
    assert "expected an agent identity (outrelay://<tenant>/agent/<uuid>)" in closed.reason
    assert presented in closed.reason


def test_role_check_needs_verification() -> None:
    with pytest.raises(ValueError, match="role check needs verify_peer"):
        TransportConfig(cert=None, key=None, ca=None, verify_peer=False, peer_roles=RELAY_ONLY)
