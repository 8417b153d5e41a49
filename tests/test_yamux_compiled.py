"""What only the compiled yamux twin does: its fast paths must be invisible.

The session tests in ``tests/mux`` run on both twins and compare them; these
check the compiled twin's own shortcuts: events built by filling their slots
directly, buffers parsed in place, payloads delivered without a copy when a
feed is exactly one payload piece, and output that keeps no reference to
what it sent.
"""

from __future__ import annotations

import dataclasses
import gc
import struct
import sys
import tracemalloc
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outrelay.mux import _session_py as PURE
from outrelay.transport.events import SendCapacityAvailable, StreamDataReceived

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fast() -> ModuleType:
    import os

    if os.environ.get("OUTRELAY_NO_EXTENSIONS"):
        pytest.skip("OUTRELAY_NO_EXTENSIONS is set: compiled twin not tested")
    try:
        from outrelay._fast import _yamux
    except ImportError:
        if os.environ.get("OUTRELAY_REQUIRE_EXTENSIONS"):
            raise
        pytest.skip("outrelay._fast._yamux is not built")
    return _yamux


def frame(kind: int, flags: int, sid: int, length: int, body: bytes = b"") -> bytes:
    return struct.pack(">BBHII", 0, kind, flags, sid, length) + body


def drain(session: Any) -> list[Any]:
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def test_fast_events_are_the_transport_dataclasses_unchanged(fast: ModuleType) -> None:
    assert fast._check_event_layout() is True
    server = fast.YamuxSession(client=False)
    server.receive_data(frame(0, 1 | 4, 1, 3, b"abc"))
    (event,) = drain(server)
    expected = StreamDataReceived(1, b"abc", True)
    assert type(event) is StreamDataReceived
    assert event == expected and hash(event) == hash(expected) and repr(event) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = b"x"  # type: ignore[misc]
    client = fast.YamuxSession(client=True)
    sid = client.open_stream()
    client.send(sid, b"hello")
    (report,) = drain(client)
    assert type(report) is SendCapacityAvailable
    assert report == SendCapacityAvailable(sid, 5, 0)
    assert dataclasses.astuple(report) == (sid, 5, 0)


def test_fast_events_hold_their_own_references(fast: ModuleType) -> None:
    server = fast.YamuxSession(client=False)
    payload = frame(0, 1, 1, 4, b"wxyz")
    server.receive_data(payload)
    (event,) = drain(server)
    data = event.data
    before = sys.getrefcount(data)
    del event
    gc.collect()
    assert sys.getrefcount(data) == before - 1  # the event's reference went with it


def test_a_feed_that_is_exactly_one_payload_piece_is_delivered_without_a_copy(
    fast: ModuleType,
) -> None:
    server = fast.YamuxSession(client=False)
    body = bytes(range(256)) * 64
    server.receive_data(frame(0, 1, 1, len(body) * 2))  # header only: payload follows
    server.receive_data(body)
    server.receive_data(body)
    first, second = drain(server)
    assert first.data is body and second.data is body


@given(
    data=st.data(),
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=8),
    kind=st.sampled_from(["bytes", "bytearray", "memoryview", "strided"]),
)
@SETTINGS
def test_buffers_of_any_kind_and_cut_give_the_pure_twins_events(
    fast: ModuleType, data: Any, sizes: list[int], kind: str
) -> None:
    wire = b"".join(
        frame(0, (1 if i == 0 else 0) | (4 if i == len(sizes) - 1 else 0), 1, n, bytes([i]) * n)
        for i, n in enumerate(sizes)
    ) + frame(2, 1, 0, 7)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    pure = PURE.YamuxSession(client=False)
    compiled = fast.YamuxSession(client=False)
    for piece in pieces:
        pure.receive_data(piece)
        if kind == "bytearray":
            compiled.receive_data(bytearray(piece))
        elif kind == "memoryview":
            compiled.receive_data(memoryview(bytearray(piece)))
        elif kind == "strided":  # not contiguous: goes through bytes() as in the pure twin
            doubled = bytearray(len(piece) * 2)
            doubled[::2] = piece
            compiled.receive_data(memoryview(doubled)[::2])
        else:
            compiled.receive_data(piece)
    assert drain(compiled) == drain(pure)
    assert compiled.data_to_send() == pure.data_to_send()


def test_sent_payloads_are_not_kept_after_data_to_send(fast: ModuleType) -> None:
    client = fast.YamuxSession(client=True)
    sid = client.open_stream()
    small = bytes(1000)
    big = bytes(300 * 1024)  # over the 256 KiB window: part waits in the queue
    base_small, base_big = sys.getrefcount(small), sys.getrefcount(big)
    client.send(sid, small)
    client.send(sid, big)
    assert sys.getrefcount(small) > base_small
    wire = client.data_to_send()
    assert type(wire) is bytes
    assert sys.getrefcount(small) == base_small
    assert sys.getrefcount(big) > base_big  # the queued tail still needs it
    assert client.send_buffered(sid) == 1000 + 300 * 1024 - 256 * 1024
    client.receive_data(frame(1, 2, sid, 256 * 1024))  # the peer opens the window
    client.data_to_send()
    assert client.send_buffered(sid) == 0
    assert sys.getrefcount(big) == base_big


def test_memory_stays_flat_over_many_round_trips(fast: ModuleType) -> None:
    client = fast.YamuxSession(client=True)
    server = fast.YamuxSession(client=False)
    chunk = bytes(1500)

    def rounds(n: int) -> None:
        for i in range(n):
            sid = client.open_stream()
            client.send(sid, chunk)
            client.send(sid, chunk, end_stream=True)
            server.receive_data(client.data_to_send())
            for event in drain(server):
                if type(event) is StreamDataReceived:
                    server.grant(event.stream_id, len(event.data))
                    if event.end_stream:
                        server.send(event.stream_id, b"ok", end_stream=True)
            client.receive_data(server.data_to_send())
            drain(client)
            assert client.stream_count == 0 and server.stream_count == 0, i

    rounds(200)  # warm up free lists and buffers
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rounds(2000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown
