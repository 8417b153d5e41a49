"""yamux session rules, each against both twins: ids, SYN/ACK, windows, FIN, RST, close."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from outrelay.transport.errors import ConnectionClosedError, StreamClosedError
from outrelay.transport.events import (
    ConnectionClosed,
    SendCapacityAvailable,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from .frames import (
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    PING,
    RST,
    SYN,
    WINDOW,
    WINDOW_UPDATE,
    KiB,
    data,
    hdr,
    parse,
    update,
)
from .pump import Peer, drain, roundtrip

pytestmark = pytest.mark.dataplane

GOAWAY_PROTOCOL = hdr(GO_AWAY, 0, 0, 1)


def pair(yamux: ModuleType, **kw: Any) -> tuple[Any, Any]:
    return yamux.YamuxSession(client=True, **kw), yamux.YamuxSession(client=False, **kw)


def closed_with_protocol_error(session: Any, why: str) -> None:
    assert session.data_to_send().endswith(GOAWAY_PROTOCOL)
    events = drain(session)
    assert isinstance(events[-1], ConnectionClosed), events
    assert events[-1].error_code == 1 and events[-1].by_us, events[-1]
    assert why in events[-1].reason
    assert session.closed and session.stream_count == 0


# -- stream ids, SYN and ACK ----------------------------------------------


def test_client_ids_are_odd_from_1_and_server_ids_even_from_2(yamux: ModuleType) -> None:
    client, server = pair(yamux)
    assert [client.open_stream() for _ in range(3)] == [1, 3, 5]
    assert [server.open_stream() for _ in range(3)] == [2, 4, 6]


def test_open_stream_sends_nothing_until_the_first_frame_which_carries_syn(
    yamux: ModuleType,
) -> None:
    client = yamux.YamuxSession(client=True)
    sid = client.open_stream()
    client.send(sid, b"hello")
    assert parse(client.data_to_send()) == [(DATA, SYN, 1, 5, b"hello")]
    client.send(sid, b"again")
    assert parse(client.data_to_send()) == [(DATA, 0, 1, 5, b"again")]


def test_an_opened_stream_without_data_is_announced_by_the_next_data_to_send(
    yamux: ModuleType,
) -> None:
    client = yamux.YamuxSession(client=True)
    client.open_stream()
    assert parse(client.data_to_send()) == [(WINDOW_UPDATE, SYN, 1, 0, b"")]
    assert client.data_to_send() == b""


def test_a_peer_syn_without_data_creates_the_stream_silently_and_is_acked(
    yamux: ModuleType,
) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(update(1, 0, SYN))
    assert drain(server) == []
    assert server.stream_count == 1
    assert parse(server.data_to_send()) == [(WINDOW_UPDATE, ACK, 1, 0, b"")]


def test_the_acceptors_ack_rides_on_its_first_data_frame(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"ping", SYN))
    assert drain(server) == [StreamDataReceived(1, b"ping", False)]
    server.send(1, b"pong")
    assert parse(server.data_to_send()) == [(DATA, ACK, 1, 4, b"pong")]


def test_a_window_above_256k_is_announced_on_the_syn_and_the_ack(yamux: ModuleType) -> None:
    client, server = pair(yamux, window=1024 * KiB)
    sid = client.open_stream()
    client.send(sid, b"x")
    assert parse(client.data_to_send()) == [
        (WINDOW_UPDATE, SYN, 1, 768 * KiB, b""),
        (DATA, 0, 1, 1, b"x"),
    ]
    server.receive_data(update(1, 768 * KiB, SYN) + data(1, b"x"))
    assert parse(server.data_to_send()) == [(WINDOW_UPDATE, ACK, 1, 768 * KiB, b"")]
    # the client may now send 1 MiB before any other update
    big = bytes(1024 * KiB)
    client.send(sid, big)
    server.receive_data(update(1, 768 * KiB))
    assert client.send_buffered(sid) == 1024 * KiB - (WINDOW - 1)


def test_window_below_the_initial_256k_is_refused(yamux: ModuleType) -> None:
    with pytest.raises(ValueError, match="window"):
        yamux.YamuxSession(client=True, window=64 * KiB)


def test_a_peer_syn_with_our_parity_is_a_protocol_error(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(2, b"x", SYN))
    closed_with_protocol_error(server, "parity")


def test_a_peer_syn_on_stream_0_is_a_protocol_error(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(update(0, 0, SYN))
    closed_with_protocol_error(server, "stream 0")


def test_a_syn_for_an_open_stream_is_a_protocol_error(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(update(1, 0, SYN) + update(1, 0, SYN))
    closed_with_protocol_error(server, "open stream 1")


def test_a_syn_reusing_the_id_of_an_ended_stream_is_a_protocol_error(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"a", SYN | FIN))
    server.send(1, b"", end_stream=True)
    assert server.stream_count == 0
    server.receive_data(data(1, b"again", SYN))
    closed_with_protocol_error(server, "reuses stream id 1")


def test_syns_arriving_out_of_order_are_accepted_once_each(yamux: ModuleType) -> None:
    # A Go peer opening streams from several goroutines may send SYN 5 before 3.
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"a", SYN) + data(5, b"c", SYN) + data(3, b"b", SYN))
    assert [e.stream_id for e in drain(server)] == [1, 5, 3]
    server.reset_stream(3, 0)
    server.receive_data(data(3, b"b", SYN))
    closed_with_protocol_error(server, "reuses stream id 3")


def test_a_frame_for_a_stream_never_opened_is_a_protocol_error(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(7, b"no syn"))
    closed_with_protocol_error(server, "never opened")


def test_a_frame_for_our_stream_never_opened_is_a_protocol_error(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    client.receive_data(update(3, 5))
    closed_with_protocol_error(client, "never opened")


def test_late_frames_for_an_ended_stream_are_dropped(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"a", SYN))
    drain(server)
    server.reset_stream(1, 9)
    assert drain(server) == [StreamReset(1, 9)]
    server.receive_data(data(1, b"in flight") + update(1, 100) + data(1, b"", FIN))
    assert drain(server) == [] and not server.closed


def test_more_peer_streams_than_max_streams_are_reset(yamux: ModuleType) -> None:
    client, server = pair(yamux, max_streams=2)
    ids = [client.open_stream() for _ in range(3)]
    for sid in ids:
        client.send(sid, b"hi")
    pc, ps = Peer(client), Peer(server)
    roundtrip(pc, ps)
    assert sorted(ps.data) == [1, 3]
    assert StreamReset(5, 0) in pc.events and StopSendingReceived(5, 0) in pc.events
    assert client.stream_count == 2 and server.stream_count == 2
    # a stream ends: room for a new one
    client.reset_stream(1, 0)
    roundtrip(pc, ps)
    sid = client.open_stream()
    client.send(sid, b"room")
    roundtrip(pc, ps)
    assert ps.data[sid] == b"room"


def test_streams_available_counts_down_from_1024_and_back(yamux: ModuleType) -> None:
    client, server = pair(yamux)
    assert client.streams_available() == 1024
    ids = [client.open_stream() for _ in range(10)]
    assert client.streams_available() == 1014
    for sid in ids:
        client.send(sid, b"", end_stream=True)
    roundtrip(client, server)
    for sid in ids:
        server.send(sid, b"", end_stream=True)
    roundtrip(client, server)
    assert client.streams_available() == 1024
    assert client.stream_count == server.stream_count == 0
    client.close()
    assert client.streams_available() == 0


# -- send side -------------------------------------------------------------


def test_send_goes_out_only_within_the_peer_window_in_bounded_frames(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    sid = client.open_stream()
    payload = bytes(range(256)) * (1200 * 4)  # 1.2 MiB
    client.send(sid, payload)
    frames = parse(client.data_to_send())
    assert sum(f[3] for f in frames) == WINDOW
    assert all(f[0] == DATA and 0 < f[3] <= yamux_max_frame() for f in frames)
    assert frames[0][1] == SYN and all(f[1] == 0 for f in frames[1:])
    assert b"".join(f[4] for f in frames) == payload[:WINDOW]
    assert client.send_buffered(sid) == len(payload) - WINDOW
    assert drain(client) == [SendCapacityAvailable(sid, WINDOW, len(payload) - WINDOW)]


def yamux_max_frame() -> int:
    from outrelay.mux import MAX_DATA_FRAME

    return MAX_DATA_FRAME


def test_a_peer_window_update_lets_queued_data_go_and_reports_capacity(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    sid = client.open_stream()
    client.send(sid, b"a" * (WINDOW + 1000))
    client.data_to_send()
    drain(client)
    client.receive_data(update(sid, 600))
    assert parse(client.data_to_send()) == [(DATA, 0, sid, 600, b"a" * 600)]
    assert drain(client) == [SendCapacityAvailable(sid, 600, 400)]
    client.receive_data(update(sid, 10_000))
    assert parse(client.data_to_send()) == [(DATA, 0, sid, 400, b"a" * 400)]
    assert drain(client) == [SendCapacityAvailable(sid, 400, 0)]
    assert client.send_buffered(sid) == 0


def test_every_byte_sent_is_reported_drained_once(yamux: ModuleType) -> None:
    client, server = pair(yamux)
    pc, ps = Peer(client), Peer(server)
    sid = client.open_stream()
    total = 0
    for size in (1, 100, 70_000, 300_000, 5, 1_000_000):
        client.send(sid, b"z" * size)
        total += size
        roundtrip(pc, ps)
    assert pc.drained[sid] == total == len(ps.data[sid])


def test_a_fin_queued_behind_data_goes_with_the_last_frame(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    sid = client.open_stream()
    client.send(sid, b"q" * (WINDOW + 10), end_stream=True)
    client.data_to_send()
    with pytest.raises(StreamClosedError):
        client.send(sid, b"more")
    client.receive_data(update(sid, 10))
    assert parse(client.data_to_send()) == [(DATA, FIN, sid, 10, b"q" * 10)]


def test_fin_alone_goes_as_a_window_update_with_fin(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    sid = client.open_stream()
    client.send(sid, b"", end_stream=True)
    assert parse(client.data_to_send()) == [(WINDOW_UPDATE, SYN | FIN, sid, 0, b"")]


def test_send_on_unknown_finished_or_closed_streams_raises(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    with pytest.raises(StreamClosedError):
        client.send(99, b"x")
    sid = client.open_stream()
    client.send(sid, b"x", end_stream=True)
    with pytest.raises(StreamClosedError):
        client.send(sid, b"y")
    client.close()
    with pytest.raises(ConnectionClosedError):
        client.send(sid, b"y")
    with pytest.raises(ConnectionClosedError):
        client.open_stream()


def test_a_window_update_growing_the_window_past_u32_is_a_protocol_error(
    yamux: ModuleType,
) -> None:
    client = yamux.YamuxSession(client=True)
    sid = client.open_stream()
    client.send(sid, b"x")
    client.receive_data(update(sid, 0xFFFFFFFF))
    closed_with_protocol_error(client, "window")


# -- receive side ----------------------------------------------------------


def test_data_is_delivered_at_once_and_the_window_reopens_only_by_grant(
    yamux: ModuleType,
) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"x" * 1000, SYN))
    assert drain(server) == [StreamDataReceived(1, b"x" * 1000, False)]
    assert parse(server.data_to_send()) == [(WINDOW_UPDATE, ACK, 1, 0, b"")]
    assert server.unconsumed(1) == 1000
    assert server.grant(1, 1000) == 1000
    assert server.data_to_send() == b""  # less than half a window: batched


def test_grants_are_batched_into_one_update_at_half_the_window(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(update(1, 0, SYN))
    server.data_to_send()
    chunk = 32 * KiB
    for _ in range(4):
        server.receive_data(data(1, b"d" * chunk))
    drain(server)
    for _ in range(3):
        assert server.grant(1, chunk) == chunk
        assert server.data_to_send() == b""
    assert server.grant(1, chunk) == chunk
    assert parse(server.data_to_send()) == [(WINDOW_UPDATE, 0, 1, 128 * KiB, b"")]


def test_grant_is_clamped_to_what_was_delivered(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"abc", SYN))
    assert server.grant(1, 100) == 3
    assert server.grant(1, 1) == 0
    assert server.grant(42, 1) == 0
    assert server.grant(1, -5) == 0


def test_data_past_the_receive_window_is_a_protocol_error(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"w" * (WINDOW - 10), SYN))
    drain(server)
    server.receive_data(data(1, b"w" * 11))
    closed_with_protocol_error(server, "window")


def test_data_announcing_more_than_the_window_is_refused_from_its_header(
    yamux: ModuleType,
) -> None:
    # the 12-byte header alone is enough: the payload is never waited for
    server = yamux.YamuxSession(client=False)
    server.receive_data(hdr(DATA, SYN, 1, 0xFFFFFFFF))
    closed_with_protocol_error(server, "window")


def test_a_data_frame_cut_across_reads_is_delivered_piece_by_piece(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    wire = data(1, b"0123456789", SYN | FIN)
    server.receive_data(wire[:5])
    assert drain(server) == []
    server.receive_data(wire[5:16])
    assert drain(server) == [StreamDataReceived(1, b"0123", False)]
    server.receive_data(wire[16:])
    assert drain(server) == [StreamDataReceived(1, b"456789", True)]


def test_data_after_the_peers_fin_is_a_protocol_error(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"a", SYN | FIN))
    server.receive_data(data(1, b"b"))
    closed_with_protocol_error(server, "after FIN")


# -- FIN, RST, release -----------------------------------------------------


def test_fin_half_closes_one_direction_only(yamux: ModuleType) -> None:
    client, server = pair(yamux)
    pc, ps = Peer(client), Peer(server)
    sid = client.open_stream()
    client.send(sid, b"request", end_stream=True)
    roundtrip(pc, ps)
    assert ps.data[sid] == b"request" and sid in ps.fin
    server.send(sid, b"response part 1")
    server.send(sid, b" and 2", end_stream=True)
    roundtrip(pc, ps)
    assert pc.data[sid] == b"response part 1 and 2" and sid in pc.fin
    assert client.stream_count == server.stream_count == 0


def test_a_stream_ends_with_no_state_when_both_directions_are_done(yamux: ModuleType) -> None:
    client, server = pair(yamux)
    for _ in range(100):
        sid = client.open_stream()
        client.send(sid, b"x" * 100, end_stream=True)
        roundtrip(client, server)
        server.send(sid, b"y" * 100, end_stream=True)
        roundtrip(client, server)
    assert client.stream_count == server.stream_count == 0


def test_a_peer_rst_ends_both_directions(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    sid = client.open_stream()
    client.send(sid, b"x" * (WINDOW + 5))
    client.data_to_send()
    drain(client)
    client.receive_data(update(sid, 0, RST))
    assert drain(client) == [StreamReset(sid, 0), StopSendingReceived(sid, 0)]
    assert client.stream_count == 0 and client.send_buffered(sid) == 0
    with pytest.raises(StreamClosedError):
        client.send(sid, b"y")


def test_a_peer_rst_after_our_fin_reports_only_the_receive_side(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    sid = client.open_stream()
    client.send(sid, b"req", end_stream=True)
    client.data_to_send()
    drain(client)
    client.receive_data(data(sid, b"", RST))
    assert drain(client) == [StreamReset(sid, 0)]


def test_reset_stream_sends_rst_and_reports_the_receive_side_ended(yamux: ModuleType) -> None:
    client, server = pair(yamux)
    pc, ps = Peer(client), Peer(server)
    sid = client.open_stream()
    client.send(sid, b"hello")
    roundtrip(pc, ps)
    client.send(sid, b"q" * WINDOW)
    client.reset_stream(sid, 7)
    frames = parse(client.data_to_send())
    assert frames[-1] == (WINDOW_UPDATE, RST, sid, 0, b"")
    assert StreamReset(sid, 7) in drain(client)
    assert client.stream_count == 0
    server.receive_data(b"".join(hdr(*f[:4]) + f[4] for f in frames))
    assert drain(server)[-2:] == [StreamReset(sid, 0), StopSendingReceived(sid, 0)]
    assert server.stream_count == 0


def test_stop_stream_is_a_reset_since_yamux_has_no_stop_sending(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"a", SYN))
    drain(server)
    server.stop_stream(1, 3)
    assert parse(server.data_to_send()) == [(WINDOW_UPDATE, RST | ACK, 1, 0, b"")]
    assert drain(server) == [StreamReset(1, 3)]
    assert server.stream_count == 0


def test_reset_of_a_stream_never_announced_sends_nothing(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    sid = client.open_stream()
    client.reset_stream(sid, 0)
    assert client.data_to_send() == b""
    assert client.stream_count == 0


def test_release_drops_data_and_returns_its_credit(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"r" * (100 * KiB), SYN))
    drain(server)
    server.data_to_send()
    server.release(1)
    assert server.unconsumed(1) == 0
    assert server.data_to_send() == b""  # 100 KiB pending: below half a window
    server.receive_data(data(1, b"r" * (100 * KiB)))
    assert drain(server) == []  # released: nothing delivered
    assert parse(server.data_to_send()) == [(WINDOW_UPDATE, 0, 1, 200 * KiB, b"")]
    server.receive_data(data(1, b"", FIN))
    assert drain(server) == []
    server.send(1, b"", end_stream=True)
    assert server.stream_count == 0


# -- ping, goaway, close ---------------------------------------------------


def test_a_ping_is_answered_with_the_same_value_and_ack(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(hdr(PING, SYN, 0, 0xDEADBEEF))
    assert server.data_to_send() == hdr(PING, ACK, 0, 0xDEADBEEF)
    assert drain(server) == []


def test_our_ping_is_answered_by_the_peer(yamux: ModuleType) -> None:
    client, server = pair(yamux)
    assert client.pong is None
    client.ping(42)
    roundtrip(client, server)
    assert client.pong == 42


def test_a_ping_on_a_stream_is_a_protocol_error(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(hdr(PING, SYN, 1, 1))
    closed_with_protocol_error(server, "Ping on stream 1")


def test_close_sends_goaway_and_reports_connection_closed_once(yamux: ModuleType) -> None:
    client, server = pair(yamux)
    sid = client.open_stream()
    client.send(sid, b"bye")
    client.close()
    client.close(2, "again")
    wire = client.data_to_send()
    assert parse(wire)[-1] == (GO_AWAY, 0, 0, 0, b"")
    assert drain(client) == [ConnectionClosed(error_code=0, reason="", by_us=True)]
    assert client.closed and client.stream_count == 0
    server.receive_data(wire)
    events = drain(server)
    assert events[0] == StreamDataReceived(sid, b"bye", False)
    assert events[1:] == [ConnectionClosed(0, "peer sent GoAway (normal)", False)]
    server.receive_data(wire)
    server.connection_lost("eof")
    assert drain(server) == []


def test_close_with_an_application_code_sends_goaway_internal_error(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    client.close(0x101, "relay shutting down")
    assert client.data_to_send() == hdr(GO_AWAY, 0, 0, 2)
    assert drain(client) == [ConnectionClosed(0x101, "relay shutting down", True)]


def test_connection_lost_reports_connection_closed_once(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    client.connection_lost("eof")
    client.connection_lost("eof")
    client.close()
    assert drain(client) == [ConnectionClosed(0, "eof", False)]
    assert client.data_to_send() == b""


def test_no_capacity_report_follows_a_reset_or_a_close(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    a, b = client.open_stream(), client.open_stream()
    client.send(a, b"x")
    client.send(b, b"y")
    client.reset_stream(a, 0)
    assert drain(client) == [StreamReset(a, 0), SendCapacityAvailable(b, 1, 0)]
    client.send(b, b"z")
    client.close()
    assert drain(client) == [ConnectionClosed(0, "", True)]


def test_an_idle_stream_keeps_under_1_kib_of_state_per_side(yamux: ModuleType) -> None:
    import tracemalloc

    client, server = pair(yamux)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            client.send(client.open_stream(), b"x")
        roundtrip(client, server)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert client.stream_count == server.stream_count == 1000
    assert (after - before) / 2000 < 1024


def test_a_go_style_open_write_close_sequence(yamux: ModuleType) -> None:
    # What a Go peer sends: WindowUpdate(SYN, 0) from OpenStream, Data from
    # Write, WindowUpdate(FIN) from Close; it expects WindowUpdate(ACK) back.
    server = yamux.YamuxSession(client=False)
    server.receive_data(update(1, 0, SYN) + data(1, b"HELLO") + update(1, 0, FIN))
    assert drain(server) == [
        StreamDataReceived(1, b"HELLO", False),
        StreamDataReceived(1, b"", True),
    ]
    assert parse(server.data_to_send()) == [(WINDOW_UPDATE, ACK, 1, 0, b"")]
    server.send(1, b"ACK", end_stream=True)
    assert parse(server.data_to_send()) == [(DATA, FIN, 1, 3, b"ACK")]
    assert server.stream_count == 0


def test_a_peer_announcing_a_larger_window_on_its_syn_lets_us_send_more(
    yamux: ModuleType,
) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(update(1, 768 * KiB, SYN))
    server.send(1, bytes(1024 * KiB + 1))
    frames = parse(server.data_to_send())
    assert sum(f[3] for f in frames if f[0] == DATA) == 1024 * KiB
    assert server.send_buffered(1) == 1


def test_a_larger_window_batches_updates_at_half_of_it(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False, window=1024 * KiB)
    server.receive_data(update(1, 0, SYN))
    server.data_to_send()  # ACK with the extra 768 KiB
    server.receive_data(data(1, bytes(600 * KiB)))
    drain(server)
    server.grant(1, 511 * KiB)
    assert server.data_to_send() == b""
    server.grant(1, 1 * KiB)
    assert parse(server.data_to_send()) == [(WINDOW_UPDATE, 0, 1, 512 * KiB, b"")]


def test_syn_with_data_and_fin_is_one_event(yamux: ModuleType) -> None:
    server = yamux.YamuxSession(client=False)
    server.receive_data(data(1, b"all", SYN | FIN))
    assert drain(server) == [StreamDataReceived(1, b"all", True)]


def test_goaway_from_the_peer_with_an_unknown_code_closes(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    client.receive_data(hdr(GO_AWAY, 0, 0, 7))
    assert drain(client) == [ConnectionClosed(7, "peer sent GoAway (code 7)", False)]
    assert client.data_to_send() == b""


def test_goaway_on_a_stream_is_a_protocol_error(yamux: ModuleType) -> None:
    client = yamux.YamuxSession(client=True)
    client.receive_data(hdr(GO_AWAY, 0, 3, 0))
    closed_with_protocol_error(client, "GoAway on stream 3")
