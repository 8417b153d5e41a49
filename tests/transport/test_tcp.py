"""The TCP + TLS + yamux transport shell (``outrelay.transport.tcp``) over real sockets.

A :func:`serve_tcp` listener and :func:`connect_tcp` links on 127.0.0.1
with the throw-away PKI: streams both ways, half-close, reset, bounded
credit, and every way a peer is refused before it sees a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from outrelay.identity import Role
from outrelay.transport import (
    ConnectionClosed,
    HandshakeError,
    HandshakeVerified,
    StreamDataReceived,
    StreamReset,
    TransportConfig,
)
from outrelay.transport.events import Event, SendCapacityAvailable
from outrelay.transport.tcp import TcpLink, TcpServer, connect_tcp, serve_tcp

from .conftest import PKI

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(60)]

T = TypeVar("T")
KiB = 1024
AGENTS = frozenset({Role.AGENT})
RELAYS = frozenset({Role.RELAY})


def run(coro_fn: Callable[[], Awaitable[T]], limit: float = 30.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await coro_fn()

    return asyncio.run(bounded())


class Peer:
    """Collects one link's events; streams' bytes, FINs and resets by id."""

    def __init__(self, link: TcpLink, *, auto_grant: bool = True) -> None:
        self.link = link
        self.auto_grant = auto_grant
        self.events: list[Event] = []
        self.data: dict[int, bytearray] = {}
        self.fin: set[int] = set()
        self.resets: dict[int, int] = {}
        self.drained = 0
        self.changed = asyncio.Event()
        link.on_event = self._on_event

    def _on_event(self, link: Any, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, StreamDataReceived):
            self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self.fin.add(event.stream_id)
            if self.auto_grant and event.data:
                link.grant(event.stream_id, len(event.data))
        elif isinstance(event, StreamReset):
            self.resets[event.stream_id] = event.error_code
        elif isinstance(event, SendCapacityAvailable):
            self.drained += event.drained
        self.changed.set()

    async def until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


class Listener:
    """A serve_tcp listener whose handler records every link it was handed."""

    def __init__(self, server: TcpServer, links: list[TcpLink]) -> None:
        self.server = server
        self.links = links
        self.peers: list[Peer] = []
        self.arrived = asyncio.Event()

    @property
    def port(self) -> int:
        return self.server.address[1]


@contextlib.asynccontextmanager
async def listener(config: TransportConfig, *, auto_grant: bool = True) -> AsyncIterator[Listener]:
    links: list[TcpLink] = []
    holder: list[Listener] = []

    def on_link(link: TcpLink) -> None:
        links.append(link)
        holder[0].peers.append(Peer(link, auto_grant=auto_grant))
        holder[0].arrived.set()

    server = await serve_tcp(config, "127.0.0.1", 0, on_link)
    lst = Listener(server, links)
    holder.append(lst)
    try:
        yield lst
    finally:
        server.close()
        await server.wait_closed()


def server_config(pki: PKI) -> TransportConfig:
    return pki.server_config(peer_roles=AGENTS)


def client_config(pki: PKI, leaf: Any = None) -> TransportConfig:
    return pki.client_config(leaf, peer_roles=RELAYS)


async def pair(lst: Listener, config: TransportConfig) -> tuple[Peer, Peer]:
    link = await connect_tcp(config, "127.0.0.1", lst.port, timeout=5)
    client = Peer(link)
    async with asyncio.timeout(5):
        await lst.arrived.wait()
    return client, lst.peers[0]


def test_tcp_link_pair_exchanges_streams_both_ways(pki: PKI) -> None:
    async def main() -> None:
        async with listener(server_config(pki)) as lst:
            client, server = await pair(lst, client_config(pki))
            assert client.link.peer_uri == "outrelay://eu/relay/r1"
            assert server.link.peer_uri == pki.client.uri
            assert isinstance(server.events[0], HandshakeVerified)
            assert server.events[0].alpn == "orp/1"
            # client -> server on the first client stream (id 1: the control stream's id)
            sid = client.link.open_stream()
            assert sid == 0  # QUIC numbering at the seam; yamux id 1 on the wire
            payload = bytes(range(256)) * 4096  # 1 MiB: several windows
            client.link.send(sid, payload, end_stream=True)
            await server.until(lambda: sid in server.fin)
            assert bytes(server.data[sid]) == payload
            # server -> client on a server stream (even id)
            back = server.link.open_stream()
            assert back % 4 == 1  # a server stream, as QUIC numbers them
            server.link.send(back, b"pong" * 1000, end_stream=True)
            await client.until(lambda: back in client.fin)
            assert bytes(client.data[back]) == b"pong" * 1000
            client.link.close()
            closed = await server.link.wait_closed()
            assert isinstance(closed, ConnectionClosed)
            assert lst.server.refused == 0

    run(main)


def test_tcp_half_close_each_direction_keeps_the_other_open(pki: PKI) -> None:
    async def main() -> None:
        async with listener(server_config(pki)) as lst:
            client, server = await pair(lst, client_config(pki))
            sid = client.link.open_stream()
            client.link.send(sid, b"request", end_stream=True)  # client's side done
            await server.until(lambda: sid in server.fin)
            # the server may still answer on the half-closed stream, in parts
            server.link.send(sid, b"part1,")
            await client.until(lambda: bytes(client.data.get(sid, b"")) == b"part1,")
            assert sid not in client.fin
            server.link.send(sid, b"part2", end_stream=True)
            await client.until(lambda: sid in client.fin)
            assert bytes(client.data[sid]) == b"part1,part2"
            client.link.close()

    run(main)


def test_tcp_reset_stream_reaches_the_peer(pki: PKI) -> None:
    async def main() -> None:
        async with listener(server_config(pki)) as lst:
            client, server = await pair(lst, client_config(pki))
            sid = client.link.open_stream()
            client.link.send(sid, b"x" * 1000)
            await server.until(lambda: len(server.data.get(sid, b"")) == 1000)
            client.link.reset_stream(sid, 0x101)
            await server.until(lambda: sid in server.resets)
            # the other streams and the connection are unaffected
            other = client.link.open_stream()
            client.link.send(other, b"still here", end_stream=True)
            await server.until(lambda: other in server.fin)
            assert bytes(server.data[other]) == b"still here"
            client.link.close()

    run(main)


def test_tcp_never_read_stream_holds_at_most_one_window(pki: PKI) -> None:
    """A receiver that never grants: the sender's bytes wait in its own queue, the
    receiver gets one stream window (``stream_window``, announced on the stream's
    first frame) and no more."""

    async def main() -> None:
        config = server_config(pki)
        window = config.stream_window
        async with listener(config, auto_grant=False) as lst:
            client, server = await pair(lst, client_config(pki))
            sid = client.link.open_stream()
            total = 4 * window
            client.link.send(sid, b"z" * total)
            await server.until(lambda: len(server.data.get(sid, b"")) >= window)
            # give the wire every chance to deliver more than the window
            for _ in range(50):
                await asyncio.sleep(0)
            await asyncio.sleep(0.2)
            got = len(server.data[sid])
            assert got == window
            assert server.link.unconsumed(sid) == window
            assert client.link.send_buffered(sid) == total - window
            # granting half a window (the update threshold) lets exactly that through
            server.link.grant(sid, window // 2)
            await server.until(lambda: len(server.data[sid]) >= window + window // 2)
            await asyncio.sleep(0.2)
            assert len(server.data[sid]) == window + window // 2
            client.link.close()

    run(main)


def _admin(pki: PKI) -> Any:
    return pki.ca.issue("admin-alice", uri="outrelay://acme/admin/alice")


@pytest.mark.parametrize(
    "case", ["no_cert", "other_ca", "expired", "self_signed", "no_uri", "admin_role"]
)
def test_tcp_listener_refuses_bad_client_before_any_stream(pki: PKI, case: str) -> None:
    """The relay's listener (agents only) refuses the client in or right after TLS:
    the handler never runs, the client never gets a stream event."""

    async def main() -> None:
        async with listener(server_config(pki)) as lst:
            if case == "admin_role":
                config = client_config(pki, _admin(pki))
            else:
                bad = pki.bad_client_config(case)
                config = TransportConfig(cert=bad.cert, key=bad.key, ca=bad.ca, peer_roles=RELAYS)
            try:
                link = await connect_tcp(config, "127.0.0.1", lst.port, timeout=5)
            except (HandshakeError, OSError, ssl.SSLError):
                link = None
            if link is not None:
                # TLS 1.3: the client finishes before the server judged its
                # certificate; the server then drops it without a word.
                peer = Peer(link)
                sid = link.open_stream()
                link.send(sid, b"HELLO?")
                async with asyncio.timeout(5):
                    await link.wait_closed()
                # nothing came from the server on any stream
                assert not [
                    e for e in peer.events if isinstance(e, StreamDataReceived | StreamReset)
                ]
            async with asyncio.timeout(5):
                while lst.server.refused == 0:
                    await asyncio.sleep(0.01)
            assert lst.links == []

    run(main)


def test_tcp_client_refuses_a_server_that_is_not_a_relay(pki: PKI) -> None:
    """An agent's certificate on the listening side: the dialler refuses it (role check)."""

    async def main() -> None:
        agent_leaf = pki.ca.issue("not-a-relay")
        config = TransportConfig(
            cert=agent_leaf.cert_path,
            key=agent_leaf.key_path,
            ca=pki.ca.cert_path,
            verify_peer=True,
        )
        # an agent leaf has no serverAuth usage or DNS name: TLS itself refuses it
        async with listener(config) as lst:
            with pytest.raises((HandshakeError, OSError, ssl.SSLError)):
                await connect_tcp(client_config(pki), "127.0.0.1", lst.port, timeout=5)
            assert lst.links == []

    run(main)


def test_tcp_client_pin_mismatch_is_refused(pki: PKI) -> None:
    async def main() -> None:
        async with listener(server_config(pki)) as lst:
            config = pki.client_config(peer_roles=RELAYS, peer_uri="outrelay://eu/relay/other")
            with pytest.raises(HandshakeError, match="pinned"):
                await connect_tcp(config, "127.0.0.1", lst.port, timeout=5)

    run(main)


def test_tcp_listener_caps_handshakes_in_progress(pki: PKI) -> None:
    """Connections that never start TLS: beyond max_half_open the next is closed at once."""

    async def main() -> None:
        config = pki.server_config(peer_roles=AGENTS, max_half_open=2, retry_threshold=1)
        async with listener(config) as lst:
            idle = [await asyncio.open_connection("127.0.0.1", lst.port) for _ in range(2)]
            async with asyncio.timeout(5):
                while len(lst.server._handshakes) < 2:
                    await asyncio.sleep(0.01)
            reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
            async with asyncio.timeout(5):
                try:
                    assert await reader.read() == b""  # closed without a handshake
                except ConnectionResetError:
                    pass  # or reset: either way, at once
            assert lst.server.m_refused_busy == 1
            # a real client still gets through once the idle ones are gone
            for _, w in [*idle, (reader, writer)]:
                w.close()
            async with asyncio.timeout(5):
                while lst.server._handshakes:
                    await asyncio.sleep(0.01)
            client, _ = await pair(lst, client_config(pki))
            client.link.close()

    run(main)
