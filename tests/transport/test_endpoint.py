"""Real aioquic over UDP on 127.0.0.1: mTLS refusals, ALPN, echo, splice backpressure, idle."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from outrelay.transport import (
    CRYPTO_ERROR_BASE,
    ConnectionClosed,
    Event,
    HandshakeError,
    HandshakeVerified,
    Link,
    MiB,
    SendCapacityAvailable,
    StreamDataReceived,
    connect,
    serve,
)

from .conftest import PKI

pytestmark = pytest.mark.dataplane


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds, polling once per loop pass, with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


async def _closed_server(server: Any) -> None:
    server.close()
    await server.wait_closed()


def test_mutual_handshake_server_sees_client_uri(pki: PKI) -> None:
    async def main() -> None:
        seen: list[str | None] = []
        server = await serve(
            "127.0.0.1", 0, pki.server_config(), lambda link: seen.append(link.peer_uri)
        )
        assert server.port > 0
        try:
            link = await connect("127.0.0.1", server.port, pki.client_config())
            event = await link.next_event()
            assert isinstance(event, HandshakeVerified)
            assert event.peer_uri == "outrelay://eu/relay/r1"
            await wait_for(lambda: bool(seen))
            assert seen == [pki.client.uri]
            link.close()
            closed = await link.wait_closed()
            assert closed.by_us
        finally:
            await _closed_server(server)

    run(main())


@pytest.mark.parametrize(
    ("case", "alert"),
    [
        ("no_cert", 116),
        ("self_signed", 48),
        ("other_ca", 48),
        ("expired", 45),
        ("no_client_auth", 43),
    ],
)
def test_refused_before_any_stream_is_served(pki: PKI, case: str, alert: int) -> None:
    config = pki.bad_client_config(case)

    async def main() -> None:
        handled: list[Link] = []
        server = await serve("127.0.0.1", 0, pki.server_config(), handled.append)
        try:
            with pytest.raises(HandshakeError) as info:
                await connect("127.0.0.1", server.port, config)
            assert info.value.error_code == CRYPTO_ERROR_BASE + alert
            await wait_for(lambda: not server.connections)
            assert handled == []
        finally:
            await _closed_server(server)

    run(main())


def test_alpn_mismatch_fails(pki: PKI) -> None:
    async def main() -> None:
        handled: list[Link] = []
        server = await serve("127.0.0.1", 0, pki.server_config(), handled.append)
        try:
            with pytest.raises(HandshakeError) as info:
                await connect("127.0.0.1", server.port, pki.client_config(alpn="h3"))
            assert info.value.error_code == CRYPTO_ERROR_BASE + 120  # no_application_protocol
            assert handled == []
        finally:
            await _closed_server(server)

    run(main())


def _echo(link: Link) -> None:
    """Echo every stream back; grant a stream's credit only as its echo is acknowledged."""

    def on_event(link: Link, event: Event) -> None:
        if isinstance(event, StreamDataReceived):
            link.send(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, SendCapacityAvailable):
            link.grant(event.stream_id, event.drained)

    link.on_event = on_event


class _PacedSender:
    """Feeds ``total`` bytes into a stream, never more than ``window`` unacknowledged."""

    def __init__(self, link: Link, stream_id: int, total: int, window: int) -> None:
        self.link, self.stream_id, self.window = link, stream_id, window
        self.remaining = total
        self.digest = hashlib.sha256()
        self.chunk = bytes(range(256)) * 256  # 64 KiB
        self.max_buffered = 0

    def pump(self) -> None:
        link = self.link
        while self.remaining and link.send_buffered(self.stream_id) < self.window:
            piece = self.chunk[: min(len(self.chunk), self.remaining)]
            self.remaining -= len(piece)
            self.digest.update(piece)
            link.send(self.stream_id, piece, end_stream=self.remaining == 0)
        self.max_buffered = max(self.max_buffered, link.send_buffered(self.stream_id))


def test_echo_8_mib_byte_exact(pki: PKI) -> None:
    total = 8 * MiB

    async def main() -> float:
        server = await serve("127.0.0.1", 0, pki.server_config(), _echo)
        try:
            link = await connect("127.0.0.1", server.port, pki.client_config())
            sid = link.open_stream()
            sender = _PacedSender(link, sid, total, MiB)
            received = hashlib.sha256()
            done = asyncio.get_running_loop().create_future()
            count = 0

            def on_event(link: Link, event: Event) -> None:
                nonlocal count
                if isinstance(event, StreamDataReceived):
                    received.update(event.data)
                    count += len(event.data)
                    link.grant(event.stream_id, len(event.data))
                    if event.end_stream and not done.done():
                        done.set_result(None)
                elif isinstance(event, SendCapacityAvailable):
                    sender.pump()

            link.on_event = on_event
            start = time.perf_counter()
            sender.pump()
            await done
            elapsed = time.perf_counter() - start
            assert count == total
            assert received.digest() == sender.digest.digest()
            assert sender.max_buffered <= 2 * MiB
            link.close()
            await link.wait_closed()
            return total / elapsed
        finally:
            await _closed_server(server)

    rate = run(main())
    print(f"echo 8 MiB: {rate / 1e6:.1f} MB/s each way")


def test_splice_backpressure_bounds_forwarder_memory(pki: PKI) -> None:
    """Sender → forwarder → slow receiver: the forwarder holds at most ~one window."""
    total = 64 * MiB
    window = MiB
    receiver_leaf = pki.ca.issue("receiver")

    async def main() -> dict[str, int]:
        legs: dict[str, Link] = {}
        pairs: dict[int, int] = {}  # sender stream -> receiver stream
        back: dict[int, int] = {}
        high = {"forwarder": 0, "sender_unconsumed": 0, "connection": 0}

        def forwarder(link: Link) -> None:
            name = "receiver" if link.peer_uri == receiver_leaf.uri else "sender"
            legs[name] = link
            link.on_event = on_sender_event if name == "sender" else on_receiver_event

        def on_sender_event(link: Link, event: Event) -> None:
            if isinstance(event, StreamDataReceived):
                out = legs["receiver"]
                target = pairs.get(event.stream_id)
                if target is None:
                    target = pairs[event.stream_id] = out.open_stream()
                    back[target] = event.stream_id
                out.send(target, event.data, event.end_stream)
                held = link.conn.unconsumed(event.stream_id) + out.send_buffered(target)
                high["forwarder"] = max(high["forwarder"], out.send_buffered(target))
                high["sender_unconsumed"] = max(
                    high["sender_unconsumed"], link.conn.unconsumed(event.stream_id)
                )
                high["connection"] = max(high["connection"], held)

        def on_receiver_event(link: Link, event: Event) -> None:
            if isinstance(event, SendCapacityAvailable) and event.stream_id in back:
                legs["sender"].grant(back[event.stream_id], event.drained)

        server = await serve("127.0.0.1", 0, pki.server_config(stream_window=window), forwarder)
        try:
            receiver = await connect(
                "127.0.0.1", server.port, pki.client_config(receiver_leaf, stream_window=window)
            )
            sender = await connect("127.0.0.1", server.port, pki.client_config())
            await wait_for(lambda: len(legs) == 2)

            # The slow reader: consumes (grants) in small steps on a timer, and
            # stalls completely for a while at the start and in the middle.
            loop = asyncio.get_running_loop()
            got = 0
            pending: dict[int, int] = {}
            digest = hashlib.sha256()
            finished = loop.create_future()
            receiver_high = 0

            def on_receive(link: Link, event: Event) -> None:
                nonlocal got, receiver_high
                if isinstance(event, StreamDataReceived):
                    got += len(event.data)
                    digest.update(event.data)
                    pending[event.stream_id] = pending.get(event.stream_id, 0) + len(event.data)
                    receiver_high = max(receiver_high, link.conn.unconsumed(event.stream_id))
                    if event.end_stream and not finished.done():
                        finished.set_result(None)

            receiver.on_event = on_receive
            stalls = [loop.time() + 0.5]  # stall at the start, and again at one third

            def stalled(now: float) -> bool:
                if len(stalls) == 1 and got > total / 3:
                    stalls.append(now + 0.5)
                return now < stalls[-1]

            def slow_grant() -> None:
                if finished.done():
                    return
                if not stalled(loop.time()):
                    for sid, n in list(pending.items()):
                        step = min(n, 512 * 1024)
                        receiver.grant(sid, step)
                        pending[sid] = n - step
                loop.call_later(0.002, slow_grant)

            slow_grant()

            sid = sender.open_stream()
            paced = _PacedSender(sender, sid, total, window)
            sender.on_event = lambda link, event: (
                paced.pump() if isinstance(event, SendCapacityAvailable) else None
            )
            start = time.perf_counter()
            paced.pump()
            await finished
            elapsed = time.perf_counter() - start
            assert got == total
            assert digest.digest() == paced.digest.digest()
            high["receiver_unconsumed"] = receiver_high
            high["sender_buffered"] = paced.max_buffered
            high["rate"] = int(total / elapsed)
            for link in (sender, receiver):
                link.close()
                await link.wait_closed()
            return high
        finally:
            await _closed_server(server)

    high = run(main(), timeout=240)
    print(f"splice 64 MiB: {high['rate'] / 1e6:.1f} MB/s; high-water marks {high}")
    slack = 64 * 1024  # one pacing chunk
    assert high["sender_unconsumed"] <= window
    assert high["forwarder"] <= window + slack
    assert high["connection"] <= 2 * window + slack
    assert high["receiver_unconsumed"] <= window
    assert high["sender_buffered"] <= window + slack


def test_idle_timeout_honoured(pki: PKI) -> None:
    async def main() -> float:
        short = {"idle_timeout": 0.5, "keepalive": 0.0}
        server = await serve("127.0.0.1", 0, pki.server_config(**short), lambda link: None)
        try:
            link = await connect("127.0.0.1", server.port, pki.client_config(**short))
            start = time.monotonic()
            closed = await asyncio.wait_for(link.wait_closed(), 10)
            assert isinstance(closed, ConnectionClosed)
            assert "Idle timeout" in closed.reason
            await wait_for(lambda: not server.connections)
            return time.monotonic() - start
        finally:
            await _closed_server(server)

    elapsed = run(main())
    assert 0.4 < elapsed < 3.0


def test_keepalive_keeps_idle_connection_open(pki: PKI) -> None:
    async def main() -> None:
        cfg = {"idle_timeout": 0.6, "keepalive": 0.15}
        server = await serve("127.0.0.1", 0, pki.server_config(**cfg), lambda link: None)
        try:
            link = await connect("127.0.0.1", server.port, pki.client_config(**cfg))
            done, _ = await asyncio.wait([asyncio.ensure_future(link.wait_closed())], timeout=2.0)
            assert not done, "connection closed although keepalive was on"
            link.close()
            await link.wait_closed()
        finally:
            await _closed_server(server)

    run(main())
