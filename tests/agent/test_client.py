"""The SDK (outrelay.Agent) against the in-test fake relay over real QUIC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

import outrelay
from outrelay.agent import (
    Agent,
    ConnectFailed,
    NotConnected,
    RegisterFailed,
    StreamRejected,
)
from outrelay.agent.testing import free_port
from outrelay.errors import OutRelayError

from .conftest import DevPKI
from .fakerelay import FakeRelay

pytestmark = pytest.mark.dataplane


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def relay_and_agents(
    pki: DevPKI, **relay_kw: Any
) -> AsyncIterator[tuple[FakeRelay, Agent, Agent]]:
    relay = FakeRelay(pki.relay_config(), **relay_kw)
    await relay.start()
    provider = Agent(pki.agent_config("provider", [relay.address], register_timeout=1.0))
    consumer = Agent(pki.agent_config("consumer", [relay.address]))
    try:
        await provider.start()
        await consumer.start()
        yield relay, provider, consumer
    finally:
        await consumer.stop()
        await provider.stop()
        await relay.close()


def test_lazy_export() -> None:
    assert outrelay.Agent is Agent
    assert issubclass(StreamRejected, OutRelayError)


def test_uri_defaults_to_certificate(dev_pki: DevPKI) -> None:
    agent = Agent(dev_pki.agent_config("consumer", ["127.0.0.1:1"]))
    assert agent.uri == "outrelay://acme/agent/00000000-0000-0000-0000-000000000002"


def test_serve_and_open_connection_echo_with_half_close(dev_pki: DevPKI) -> None:
    async def main() -> None:
        async with relay_and_agents(dev_pki) as (relay, provider, consumer):
            seen: list[Any] = []

            async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                seen.append(w.get_extra_info("peer_uri"))
                await echo(r, w)

            await provider.serve("echo", handler)
            assert relay.registers[-1] == ("echo", "")
            payload = os.urandom(3 * 1024 * 1024 + 17)
            reader, writer = await consumer.open_connection("echo", method="GET /x")
            assert writer.get_extra_info("stream_id") == relay.opened[-1].stream_id
            assert relay.opened[-1].method == "GET /x"

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            got = await reader.read()  # until the provider's FIN
            await sender
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            assert seen == [consumer.uri]
            writer.close()
            await writer.wait_closed()

    run(main())


def test_provider_speaks_first_and_closes(dev_pki: DevPKI) -> None:
    async def main() -> None:
        async with relay_and_agents(dev_pki) as (_, provider, consumer):

            async def banner(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                w.write(b"220 hello\r\n")
                w.write_eof()
                assert await r.read() == b"bye"

            await provider.serve("banner", banner)
            reader, writer = await consumer.open_connection("banner")
            assert await reader.read() == b"220 hello\r\n"
            writer.write(b"bye")
            writer.write_eof()
            await writer.wait_closed()

    run(main())


def test_rejections_raise_with_code_and_reason(dev_pki: DevPKI) -> None:
    async def main() -> None:
        async with relay_and_agents(dev_pki, deny={"secret"}) as (relay, provider, consumer):
            with pytest.raises(StreamRejected) as info:
                await consumer.open_connection("nope")
            assert (info.value.code, info.value.reason) == (404, "service not found")
            with pytest.raises(StreamRejected) as info:
                await consumer.open_connection("secret")
            assert info.value.code == 403
            # Provider side: backend refuses -> provider sends 502, relay says 503.
            with socket_closed_port() as port:
                await provider.expose("down", "127.0.0.1", port)
            with pytest.raises(StreamRejected) as info:
                await consumer.open_connection("down")
            assert info.value.code == 503
            await wait_for(lambda: bool(relay.provider_rejects))
            code, reason = relay.provider_rejects[-1]
            assert code == 502 and f"127.0.0.1:{port}" in reason
            # The session survives rejections.
            await provider.serve("echo", echo)
            reader, writer = await consumer.open_connection("echo")
            writer.write(b"ok")
            writer.write_eof()
            assert await reader.read() == b"ok"
            writer.close()

    run(main())


@contextlib.contextmanager
def socket_closed_port() -> Any:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def test_expose_bridges_to_tcp_backend(dev_pki: DevPKI) -> None:
    async def main() -> None:
        backend = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = backend.sockets[0].getsockname()[1]
        try:
            async with relay_and_agents(dev_pki) as (relay, provider, consumer):
                await provider.expose("tcp-echo", "127.0.0.1", port)
                assert relay.registers[-1] == ("tcp-echo", f"127.0.0.1:{port}")
                reader, writer = await consumer.open_connection("tcp-echo")
                data = os.urandom(200_000)
                writer.write(data)
                writer.write_eof()
                assert await reader.read() == data
                writer.close()
        finally:
            backend.close()
            await backend.wait_closed()

    run(main())


def test_register_refused_times_out(dev_pki: DevPKI) -> None:
    async def main() -> None:
        async with relay_and_agents(dev_pki, refuse={"bad"}) as (_, provider, _c):
            with pytest.raises(RegisterFailed, match="REGISTER_ACK"):
                await provider.serve("bad", echo)
            assert "bad" not in provider.services

    run(main())


def test_start_fails_over_to_second_relay_and_fails_when_none(dev_pki: DevPKI) -> None:
    async def main() -> None:
        relay = FakeRelay(dev_pki.relay_config())
        await relay.start()
        with socket_closed_port() as dead:
            agent = Agent(
                dev_pki.agent_config(
                    "consumer", [f"127.0.0.1:{dead}", relay.address], connect_timeout=1.0
                )
            )
        try:
            await agent.start()
            assert agent.relay == relay.address
        finally:
            await agent.stop()
            await relay.close()
        with socket_closed_port() as dead:
            lonely = Agent(
                dev_pki.agent_config(
                    "consumer", [f"127.0.0.1:{dead}"], connect_timeout=0.5, exit_on_failure=True
                )
            )
            with pytest.raises(ConnectFailed):
                await lonely.start()
        with pytest.raises(NotConnected):
            await lonely.open_connection("x")

    run(main())


def test_start_waits_for_a_relay_that_comes_up_later(
    dev_pki: DevPKI, caplog: pytest.LogCaptureFixture
) -> None:
    """Without exit_on_failure, start() retries with the backoff until a relay answers."""

    async def main() -> None:
        port = free_port(socket.SOCK_DGRAM)
        agent = Agent(dev_pki.agent_config("consumer", [f"127.0.0.1:{port}"], max_backoff=1.0))
        starting = asyncio.ensure_future(agent.start())
        relay = FakeRelay(dev_pki.relay_config())
        try:
            await wait_for(lambda: "agent: waiting for a relay" in caplog.text)
            assert not starting.done()
            await relay.start(port)
            await asyncio.wait_for(starting, 10)
            assert agent.connected and agent.relay == relay.address
        finally:
            starting.cancel()
            await agent.stop()
            await relay.close()

    with caplog.at_level("WARNING", logger="outrelay.agent"):
        run(main())
    line = next(r.getMessage() for r in caplog.records if "waiting for a relay" in r.getMessage())
    assert "connection refused" in line and line.endswith("retry in 1s")


def test_stop_ends_a_start_still_waiting_for_a_relay(dev_pki: DevPKI) -> None:
    async def main() -> None:
        port = free_port(socket.SOCK_DGRAM)
        agent = Agent(dev_pki.agent_config("consumer", [f"127.0.0.1:{port}"]))
        starting = asyncio.ensure_future(agent.start())
        await wait_for(lambda: agent.last_error is not None)
        await agent.stop()
        with pytest.raises(NotConnected, match="stopped while waiting"):
            await asyncio.wait_for(starting, 5)

    run(main())


def test_reconnect_replays_register(dev_pki: DevPKI) -> None:
    async def main() -> None:
        relay = FakeRelay(dev_pki.relay_config())
        port = await relay.start()
        provider = Agent(dev_pki.agent_config("provider", [relay.address]))
        consumer = Agent(dev_pki.agent_config("consumer", [relay.address]))
        await provider.serve("echo", echo)
        await provider.start()
        await consumer.start()
        try:
            reader, writer = await consumer.open_connection("echo")
            await relay.close()
            with pytest.raises(ConnectionError):
                await reader.read()
            writer.close()
            assert not consumer.connected or True
            relay2 = FakeRelay(dev_pki.relay_config())
            await relay2.start(port)
            try:
                await provider.wait_connected(15)
                await consumer.wait_connected(15)
                await wait_for(lambda: "echo" in relay2.services)
                assert relay2.registers == [("echo", "")]
                reader, writer = await consumer.open_connection("echo")
                writer.write(b"again")
                writer.write_eof()
                assert await reader.read() == b"again"
                writer.close()
            finally:
                await relay2.close()
        finally:
            await consumer.stop()
            await provider.stop()

    run(main())
