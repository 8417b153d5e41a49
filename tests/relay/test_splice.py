"""Splice in memory: credit follows the destination's acknowledgements."""

from __future__ import annotations

from dataclasses import dataclass, field

from outrelay.observe import Registry
from outrelay.relay.splice import SPLICE_ABORTED, Splice, SpliceMeters
from outrelay.transport import StreamClosedError


@dataclass(eq=False)
class FakeLeg:
    sent: bytearray = field(default_factory=bytearray)
    fin: bool = False
    granted: int = 0
    resets: list[int] = field(default_factory=list)
    stops: list[int] = field(default_factory=list)
    broken: bool = False

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if self.broken:
            raise StreamClosedError("reset")
        self.sent += data
        self.fin |= end_stream

    def grant(self, stream_id: int, n: int) -> int:
        self.granted += n
        return n

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        self.resets.append(error_code)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        self.stops.append(error_code)


def _splice() -> tuple[Splice, FakeLeg, FakeLeg, Registry, list[Splice]]:
    a, b, reg = FakeLeg(), FakeLeg(), Registry()
    ended: list[Splice] = []
    s = Splice(a, 4, b, 1, on_end=ended.append, meters=SpliceMeters(reg))
    return s, a, b, reg, ended


def test_bytes_pass_and_credit_waits_for_drain() -> None:
    s, a, b, reg, _ = _splice()
    s.data(a, 4, b"x" * 1000, False)
    assert bytes(b.sent) == b"x" * 1000
    assert a.granted == 0  # nothing granted until B's peer acknowledged
    assert reg.gauge("splice_buffer_bytes").value == 1000
    s.drained(b, 1, 600)
    assert a.granted == 600
    s.drained(b, 1, 10_000)  # capped at what we hold
    assert a.granted == 1000
    assert reg.gauge("splice_buffer_bytes").value == 0
    assert reg.counter("bytes_forwarded").value == 1000


def test_half_close_each_way_then_end() -> None:
    s, a, b, reg, ended = _splice()
    s.data(a, 4, b"req", True)
    assert b.fin and not ended
    s.data(b, 1, b"resp", False)  # the other direction still flows
    assert bytes(a.sent) == b"resp"
    s.data(b, 1, b"", True)
    assert a.fin and ended == [s]
    assert reg.gauge("splices_active").value == 0
    assert reg.gauge("splice_buffer_bytes").value == 0


def test_reset_forwarded_as_reset() -> None:
    s, a, b, _, ended = _splice()
    s.reset(a, 4, 7)
    assert b.resets == [7] and not ended
    s.stop_sending(a, 4, 9)  # A's peer wants nothing more: ask B's peer to stop
    assert b.stops == [9] and ended == [s]


def test_destination_broken_stops_source() -> None:
    s, a, b, _, _ = _splice()
    b.broken = True
    s.data(a, 4, b"data", False)
    assert a.stops == [SPLICE_ABORTED]
    s.data(a, 4, b"more", False)  # ignored: the direction is over
    assert a.stops == [SPLICE_ABORTED]


def test_connection_closed_aborts_other_leg() -> None:
    s, a, b, _, ended = _splice()
    s.data(a, 4, b"x", False)
    s.connection_closed(b)
    assert a.resets == [SPLICE_ABORTED] and a.stops == [SPLICE_ABORTED]
    assert ended == [s]


def test_early_data_counts_as_held_and_core_bytes_are_skipped() -> None:
    s, a, b, reg, ended = _splice()
    # the core forwarded 5 consumer bytes and FIN after a 40-byte INCOMING_STREAM
    s.early(a, 4, 5, True, 0)
    s.early(b, 1, 0, False, 40)
    assert reg.gauge("splice_buffer_bytes").value == 5
    s.drained(b, 1, 42)  # 40 of them were the core's own frame
    assert a.granted == 2
    s.drained(b, 1, 10)
    assert a.granted == 5 and reg.gauge("splice_buffer_bytes").value == 0
    s.data(a, 4, b"", True)  # FIN already forwarded: not sent again
    assert not b.fin and not ended
    s.data(b, 1, b"resp", True)
    assert bytes(a.sent) == b"resp" and a.fin and ended == [s]
