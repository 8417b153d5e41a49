"""The seam between the transports and the relay and agent cores: :class:`StreamLink`.

Both :class:`outrelay.transport.endpoint.Link` (QUIC) and
:class:`outrelay.transport.tcp.TcpLink` (TCP + TLS + yamux) have this
interface; the relay server, its splices and the agent session use nothing
else, so they never learn which transport carries a connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from outrelay.transport import events as ev


class StreamLink(Protocol):
    """One verified connection carrying bidirectional streams with credit."""

    #: Called synchronously with every event (``HandshakeVerified`` first).
    on_event: Any
    #: Socket errors (QUIC: ICMP refusals); never called on TCP.
    on_socket_error: Callable[[Exception], None] | None
    #: The peer's address.
    addr: Any
    #: ``"quic"`` or ``"tcp"``.
    transport_name: str

    @property
    def peer_uri(self) -> str | None: ...

    @property
    def closed(self) -> bool: ...

    def open_stream(self) -> int: ...

    def streams_available(self) -> int: ...

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...

    def send_buffered(self, stream_id: int) -> int: ...

    def grant(self, stream_id: int, n: int) -> int: ...

    def unconsumed(self, stream_id: int) -> int: ...

    def release(self, stream_id: int) -> None: ...

    def reset_stream(self, stream_id: int, error_code: int) -> None: ...

    def stop_stream(self, stream_id: int, error_code: int) -> None: ...

    def close(self, error_code: int = 0, reason: str = "") -> None: ...

    async def wait_closed(self) -> ev.ConnectionClosed: ...

    async def next_event(self) -> ev.Event: ...
