"""Two :class:`OrpConnection` peers pumped into each other in memory, on a fake clock."""

from __future__ import annotations

from collections.abc import Callable

from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header

from outrelay.transport import Event, OrpConnection, TransportConfig

CLIENT_ADDR = ("10.0.0.1", 40000)
SERVER_ADDR = ("10.0.0.2", 7443)


class Pair:
    """A client and a server connection joined by a lossless zero-delay wire."""

    def __init__(self, client_config: TransportConfig, server_config: TransportConfig) -> None:
        self.now = 1000.0
        self.client = OrpConnection(client_config, is_client=True)
        self.client.connect(SERVER_ADDR, self.now)
        first = self.client.datagrams_to_send(self.now)
        header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8)
        self.server = OrpConnection(
            server_config,
            is_client=False,
            original_destination_connection_id=header.destination_cid,
        )
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        for data, _ in first:
            self.server.receive_datagram(data, CLIENT_ADDR, self.now)
        self._collect()

    def _collect(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)

    def step(self) -> bool:
        """Move every pending datagram once; True if anything moved."""
        moved = False
        for data, _ in self.client.datagrams_to_send(self.now):
            self.server.receive_datagram(data, CLIENT_ADDR, self.now)
            moved = True
        for data, _ in self.server.datagrams_to_send(self.now):
            self.client.receive_datagram(data, SERVER_ADDR, self.now)
            moved = True
        self._collect()
        return moved

    def advance(self, max_step: float = 0.05) -> None:
        """Jump the clock to the next timer (at most ``max_step``) and fire timers."""
        timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
        target = min(timers) if timers else self.now + max_step
        self.now = max(self.now, min(target, self.now + max_step))
        for conn in (self.client, self.server):
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(self.now)
        self._collect()

    def run(self, until: Callable[[], bool] | None = None, *, max_rounds: int = 20000) -> None:
        """Pump until ``until()`` holds, or until both sides are quiet."""
        for _ in range(max_rounds):
            if until is not None and until():
                return
            if not self.step():
                if until is None:
                    return
                self.advance()
        raise AssertionError("pair did not reach the condition")
