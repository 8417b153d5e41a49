"""The burst-reading, batch-writing UDP socket under the endpoint."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from outrelay.transport import udp
from outrelay.transport.udp import UdpTransport, open_udp

pytestmark = pytest.mark.dataplane


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop, bounded in time."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(30):
                await fn(*args, **kwargs)

        asyncio.run(bounded())

    return wrapper


class Sink:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.bursts: list[int] = []
        self.errors: list[Exception] = []
        self.lost = asyncio.get_running_loop().create_future()
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)
        self.arrived.set()

    def burst_done(self) -> None:
        self.bursts.append(len(self.got))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def _until(sink: Sink, n: int) -> None:
    async with asyncio.timeout(5):
        while len(sink.got) < n:
            sink.arrived.clear()
            await sink.arrived.wait()


@aio
async def test_one_wakeup_reads_every_pending_datagram() -> None:
    sink = Sink()
    transport = await open_udp(sink, local_addr=("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # Queued before the loop gets a chance to read: one wake-up, one burst.
        for i in range(20):
            sender.sendto(b"d%02d" % i, transport.get_extra_info("sockname"))
        await _until(sink, 20)
        assert sink.got == [b"d%02d" % i for i in range(20)]
        assert sink.bursts == [20]
    finally:
        sender.close()
        transport.close()
    assert await asyncio.wait_for(sink.lost, 5) is None
    assert transport.is_closing()


@aio
async def test_a_burst_is_capped_so_the_loop_stays_fair() -> None:
    sink = Sink()
    transport = await open_udp(sink, local_addr=("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        n = udp.MAX_BURST + 10
        for i in range(n):
            sender.sendto(i.to_bytes(2, "big"), transport.get_extra_info("sockname"))
        await _until(sink, n)
        assert sink.bursts[0] == udp.MAX_BURST
        assert sink.bursts[-1] == n
    finally:
        sender.close()
        transport.close()


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "plain"])
@aio
async def test_send_all_keeps_datagram_boundaries_and_order(gso: bool) -> None:
    receiver_sink = Sink()
    receiver = await open_udp(receiver_sink, local_addr=("127.0.0.1", 0))
    other_sink = Sink()
    other = await open_udp(other_sink, local_addr=("127.0.0.1", 0))
    sender_sink = Sink()
    sender = await open_udp(sender_sink, local_addr=("127.0.0.1", 0))
    sender._gso = gso
    to, to_other = receiver.get_extra_info("sockname"), other.get_extra_info("sockname")
    try:
        # runs of equal size, a shorter tail, a change of address, a larger one
        datagrams = [(bytes([i]) * 1200, to) for i in range(70)]
        datagrams += [(b"tail" * 10, to), (b"o" * 1200, to_other), (b"p" * 1200, to)]
        datagrams += [(b"big" * 500, to), (b"s" * 100, to)]
        sender.send_all(datagrams)
        expected = [d for d, a in datagrams if a == to]
        await _until(receiver_sink, len(expected))
        await _until(other_sink, 1)
        assert receiver_sink.got == expected
        assert other_sink.got == [b"o" * 1200]
        assert sender_sink.errors == []
        assert sender._gso is gso  # the kernel took the GSO sends (Linux)
    finally:
        for t in (receiver, other, sender):
            t.close()


@aio
async def test_connected_socket_sends_without_address_and_reports_peer() -> None:
    server_sink = Sink()
    server = await open_udp(server_sink, local_addr=("127.0.0.1", 0))
    client_sink = Sink()
    client = await open_udp(client_sink, remote_addr=server.get_extra_info("sockname"))
    try:
        assert client.get_extra_info("peername") == server.get_extra_info("sockname")
        assert server.get_extra_info("peername") is None
        client.send_all([(b"a" * 1200, None), (b"b" * 1200, None), (b"c", None)])
        await _until(server_sink, 3)
        assert server_sink.got == [b"a" * 1200, b"b" * 1200, b"c"]
    finally:
        client.close()
        server.close()


@aio
async def test_full_socket_buffer_queues_then_drains() -> None:
    sink = Sink()
    receiver = await open_udp(sink, local_addr=("127.0.0.1", 0))
    sender_sink = Sink()
    sender = await open_udp(sender_sink, local_addr=("127.0.0.1", 0))
    real = sender._sock
    refusals = 3

    class Busy:
        """The socket says EAGAIN a few times, like a full send buffer."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def sendto(self, data: bytes, addr: Any) -> int:
            nonlocal refusals
            if refusals:
                refusals -= 1
                raise BlockingIOError
            return real.sendto(data, addr)

    sender._sock = Busy()  # type: ignore[assignment]
    sender._gso = False
    to = receiver.get_extra_info("sockname")
    try:
        for i in range(5):
            sender.sendto(b"q%d" % i, to)
        assert len(sender._backlog) == 5  # order kept: later ones wait behind the first
        await _until(sink, 5)
        assert sink.got == [b"q%d" % i for i in range(5)]
        assert not sender._backlog
    finally:
        sender._sock = real
        sender.close()
        receiver.close()


def test_transport_type_is_exported_for_typing() -> None:
    assert UdpTransport.__name__ == "UdpTransport"
