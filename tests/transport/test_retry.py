"""Address validation on a real endpoint: Retry, the half-open cap, spoofed Initials (127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicErrorCode, QuicPacketType

from outrelay.observe.metrics import Registry
from outrelay.transport import (
    HandshakeError,
    HandshakeVerified,
    Server,
    StreamDataReceived,
    connect,
    serve,
)
from outrelay.transport.admission import AdmissionMeters
from outrelay.transport.testing import client_initial, feed, parse_header

from .conftest import PKI
from .test_endpoint import _closed_server, run, wait_for

pytestmark = pytest.mark.dataplane


def _meters(registry: Registry) -> AdmissionMeters:
    return AdmissionMeters.from_registry(registry)


class Spoofer:
    """A raw UDP socket on 127.0.0.1 that sends crafted Initials and reads what comes back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    async def replies(self, timeout: float) -> list[bytes]:
        """Every datagram that arrives within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        out: list[bytes] = []
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    out.append(await loop.sock_recv(self.sock, 65536))
            except TimeoutError:
                break
        return out


def _state(server: Server) -> tuple[int, int, int]:
    """(connections, routed connection ids, half-open) of a server."""
    return len(server.connections), len(server.links), server.admission.half_open


async def _echo_once(server_port: int, pki: PKI) -> bytes:
    link = await connect("127.0.0.1", server_port, pki.client_config(), timeout=10)
    try:
        assert isinstance(await link.next_event(), HandshakeVerified)
        sid = link.open_stream()
        link.send(sid, b"ping through a validated address", end_stream=True)
        got = b""
        while True:
            event = await link.next_event()
            if isinstance(event, StreamDataReceived):
                got += event.data
                if event.end_stream:
                    return got
    finally:
        link.close()
        await link.wait_closed()


def _echo_handler(link: Any) -> None:
    def on_event(lk: Any, event: Any) -> None:
        if isinstance(event, StreamDataReceived):
            lk.grant(event.stream_id, len(event.data))
            lk.send(event.stream_id, event.data, event.end_stream)

    link.on_event = on_event


def test_retry_always_client_completes_handshake_and_carries_a_stream(pki: PKI) -> None:
    async def main() -> None:
        registry = Registry()
        server = await serve(
            "127.0.0.1", 0, pki.server_config(retry="always"), _echo_handler,
            meters=_meters(registry),
        )  # fmt: skip
        try:
            assert await _echo_once(server.port, pki) == b"ping through a validated address"
            assert registry.counter("quic_retries_sent").value == 1
            assert registry.counter("quic_handshakes_started").value == 1
            assert registry.counter("quic_invalid_tokens").value == 0
            await wait_for(lambda: _state(server) == (0, 0, 0))
        finally:
            await _closed_server(server)

    run(main())


def test_spoofed_initials_get_retry_and_create_no_connection_state(pki: PKI) -> None:
    async def main() -> None:
        server = await serve("127.0.0.1", 0, pki.server_config(retry="always"), _echo_handler)
        spoofer = Spoofer()
        try:
            addr = ("127.0.0.1", server.port)
            sent = []
            for _ in range(20):
                datagram, _ = client_initial(addr)
                assert len(datagram) >= 1200
                sent.append(parse_header(datagram))
                spoofer.sock.sendto(datagram, addr)
            replies = await spoofer.replies(1.0)
            assert len(replies) == 20
            headers = [parse_header(r) for r in replies]
            assert {h.packet_type for h in headers} == {QuicPacketType.RETRY}
            assert {h.destination_cid for h in headers} == {h.source_cid for h in sent}
            assert all(len(r) < 200 for r in replies)  # no amplification
            assert _state(server) == (0, 0, 0)
        finally:
            spoofer.close()
            await _closed_server(server)

    run(main())


def test_auto_mode_creates_state_below_threshold_and_retries_beyond(pki: PKI) -> None:
    async def main() -> None:
        config = pki.server_config(retry="auto", retry_threshold=3, max_half_open=5)
        server = await serve("127.0.0.1", 0, config, _echo_handler)
        spoofer = Spoofer()
        try:
            addr = ("127.0.0.1", server.port)
            for _ in range(10):
                spoofer.sock.sendto(client_initial(addr)[0], addr)
            await wait_for(lambda: server.admission.half_open == 3)
            replies = await spoofer.replies(1.0)
            kinds = [parse_header(r).packet_type for r in replies]
            assert kinds.count(QuicPacketType.RETRY) == 7
            assert len(server.connections) == 3
            # A real client still gets in: Retry, then a validated handshake.
            assert await _echo_once(server.port, pki) == b"ping through a validated address"
        finally:
            spoofer.close()
            await _closed_server(server)

    run(main())


def test_never_mode_drops_initials_beyond_the_half_open_cap(pki: PKI) -> None:
    async def main() -> None:
        registry = Registry()
        config = pki.server_config(retry="never", retry_threshold=2, max_half_open=4)
        server = await serve("127.0.0.1", 0, config, _echo_handler, meters=_meters(registry))
        spoofer = Spoofer()
        try:
            addr = ("127.0.0.1", server.port)
            for _ in range(12):
                spoofer.sock.sendto(client_initial(addr)[0], addr)
            await wait_for(lambda: registry.counter("quic_initials_dropped").value == 8)
            assert len(server.connections) == 4
            assert registry.gauge("quic_half_open").value == 4
            assert registry.gauge("quic_connections").value == 4
            replies = await spoofer.replies(0.5)
            assert QuicPacketType.RETRY not in {parse_header(r).packet_type for r in replies}
        finally:
            spoofer.close()
            await _closed_server(server)

    run(main())


def test_forged_token_is_closed_with_invalid_token_and_keeps_no_state(pki: PKI) -> None:
    async def main() -> None:
        server = await serve("127.0.0.1", 0, pki.server_config(retry="always"), _echo_handler)
        spoofer = Spoofer()
        try:
            addr = ("127.0.0.1", server.port)
            datagram, client = client_initial(addr, token=b"\x01" + bytes(40))
            spoofer.sock.sendto(datagram, addr)
            replies = await spoofer.replies(1.0)
            assert len(replies) == 1
            assert parse_header(replies[0]).packet_type == QuicPacketType.INITIAL
            events = feed(client, replies[0], addr)
            closed = [e for e in events if isinstance(e, ConnectionTerminated)]
            assert closed and closed[0].error_code == QuicErrorCode.INVALID_TOKEN
            assert _state(server) == (0, 0, 0)
        finally:
            spoofer.close()
            await _closed_server(server)

    run(main())


def test_replayed_retry_token_from_another_port_is_refused(pki: PKI) -> None:
    async def main() -> None:
        server = await serve("127.0.0.1", 0, pki.server_config(retry="always"), _echo_handler)
        victim, thief = Spoofer(), Spoofer()
        try:
            addr = ("127.0.0.1", server.port)
            datagram, _ = client_initial(addr)
            victim.sock.sendto(datagram, addr)
            (retry,) = await victim.replies(1.0)
            header = parse_header(retry)
            assert header.packet_type == QuicPacketType.RETRY
            stolen, _ = client_initial(addr, token=header.token)
            thief.sock.sendto(stolen, addr)
            (answer,) = await thief.replies(1.0)
            assert parse_header(answer).packet_type == QuicPacketType.INITIAL  # INVALID_TOKEN
            assert _state(server) == (0, 0, 0)
        finally:
            victim.close()
            thief.close()
            await _closed_server(server)

    run(main())


def test_undersized_and_unknown_packets_are_dropped_without_reply(pki: PKI) -> None:
    async def main() -> None:
        server = await serve("127.0.0.1", 0, pki.server_config(retry="always"), _echo_handler)
        spoofer = Spoofer()
        try:
            addr = ("127.0.0.1", server.port)
            datagram, _ = client_initial(addr)
            spoofer.sock.sendto(datagram[:1199], addr)  # too small for an Initial
            unknown_version = bytearray(datagram[:1199])
            unknown_version[1:5] = b"\x1a\x2a\x3a\x4a"
            spoofer.sock.sendto(bytes(unknown_version), addr)  # small: no Version Negotiation
            spoofer.sock.sendto(b"\x40" + bytes(1300), addr)  # short header, unknown id
            spoofer.sock.sendto(b"\xff\xff", addr)  # garbage
            assert await spoofer.replies(0.5) == []
            assert _state(server) == (0, 0, 0)
        finally:
            spoofer.close()
            await _closed_server(server)

    run(main())


def test_half_open_count_returns_to_zero_after_verified_and_refused_handshakes(pki: PKI) -> None:
    async def main() -> None:
        registry = Registry()
        config = pki.server_config(retry="auto", retry_threshold=1, max_half_open=2)
        server = await serve(
            "127.0.0.1", 0, config, _echo_handler, meters=_meters(registry)
        )  # fmt: skip
        try:
            # A client refused for its certificate is counted, then settled.
            with pytest.raises(HandshakeError):
                await connect(
                    "127.0.0.1", server.port, pki.bad_client_config("other_ca"), timeout=10
                )
            await wait_for(lambda: server.admission.half_open == 0)
            # Sequential good clients never pass the threshold of 1: no Retry needed.
            for _ in range(3):
                assert await _echo_once(server.port, pki) == b"ping through a validated address"
            await wait_for(lambda: _state(server) == (0, 0, 0))
            assert registry.counter("quic_retries_sent").value == 0
            assert registry.counter("quic_handshakes_started").value == 4
            assert registry.gauge("quic_half_open").value == 0
            assert registry.gauge("quic_connections").value == 0
        finally:
            await _closed_server(server)

    run(main())


def test_validated_client_gets_in_while_spoofed_handshakes_fill_the_threshold(pki: PKI) -> None:
    async def main() -> None:
        config = pki.server_config(retry="auto", retry_threshold=4, max_half_open=8)
        server = await serve("127.0.0.1", 0, config, _echo_handler)
        spoofer = Spoofer()
        try:
            addr = ("127.0.0.1", server.port)
            for _ in range(40):
                spoofer.sock.sendto(client_initial(addr)[0], addr)
            await wait_for(lambda: server.admission.half_open == 4)
            for _ in range(3):
                assert await _echo_once(server.port, pki) == b"ping through a validated address"
            # Only the spoofed half-open ones remain once the clients' connections closed.
            await wait_for(lambda: len(server.connections) == 4)
        finally:
            spoofer.close()
            await _closed_server(server)

    run(main())
