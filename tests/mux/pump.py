"""In-memory helpers: pump two yamux sessions into each other, collect events."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from outrelay.transport.events import (
    ConnectionClosed,
    Event,
    SendCapacityAvailable,
    StreamDataReceived,
)


def drain(session: Any) -> list[Event]:
    """Every event the session has queued now."""
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


class Peer:
    """One session plus what its application saw, granting data as it arrives."""

    def __init__(self, session: Any, *, auto_grant: bool = True) -> None:
        self.s = session
        self.auto_grant = auto_grant
        self.events: list[Event] = []
        self.data: dict[int, bytearray] = defaultdict(bytearray)
        self.fin: set[int] = set()
        self.drained: dict[int, int] = defaultdict(int)
        self.closed: list[ConnectionClosed] = []

    def poll(self) -> list[Event]:
        new = drain(self.s)
        for event in new:
            if type(event) is StreamDataReceived:
                self.data[event.stream_id] += event.data
                if event.end_stream:
                    self.fin.add(event.stream_id)
                if self.auto_grant and event.data:
                    self.s.grant(event.stream_id, len(event.data))
            elif type(event) is SendCapacityAvailable:
                self.drained[event.stream_id] += event.drained
            elif type(event) is ConnectionClosed:
                self.closed.append(event)
        self.events += new
        return new


def roundtrip(a: Any, b: Any, *, max_rounds: int = 10_000) -> tuple[list[Event], list[Event]]:
    """Pump ``a`` and ``b`` (sessions or :class:`Peer`) into each other until both are quiet.

    Returns the events each side saw during the pumping.
    """
    pa = a if isinstance(a, Peer) else Peer(a)
    pb = b if isinstance(b, Peer) else Peer(b)
    seen_a: list[Event] = []
    seen_b: list[Event] = []
    for _ in range(max_rounds):
        seen_a += pa.poll()
        seen_b += pb.poll()
        ab = pa.s.data_to_send()
        ba = pb.s.data_to_send()
        if not ab and not ba:
            return seen_a, seen_b  # data_to_send queues no events: both are quiet
        if ab:
            pb.s.receive_data(ab)
        if ba:
            pa.s.receive_data(ba)
    raise AssertionError("roundtrip did not settle")
