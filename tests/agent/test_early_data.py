"""Early data on the consumer side: bytes written right after OPEN_STREAM, before the answer.

In memory (the sans-IO core, the stream transport over a stub session) and
over real QUIC against the fake relay in its ``early`` mode, which forwards
what follows OPEN_STREAM to the provider right after INCOMING_STREAM, as the
relay does (relay.md "Early data").
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import pytest

from outrelay.agent import StreamRejected
from outrelay.agent import events as ev
from outrelay.agent.config import Mapping
from outrelay.agent.core import Phase, Role
from outrelay.agent.resume import ResumableState
from outrelay.agent.runner import ConsumerListener
from outrelay.agent.stream import RelayStreamTransport, open_stream_pair
from outrelay.orp import FrameType, encode_message
from outrelay.proto import orp_pb2 as pb

from .conftest import DevPKI
from .test_client import echo, relay_and_agents, run, wait_for
from .test_core import started
from .test_resume_transport import StubSession

SID = 0x5EED
REQUEST = b"GET / HTTP/1.0\r\n\r\n"


def reject(code: int, reason: str) -> bytes:
    return encode_message(FrameType.STREAM_REJECT, pb.StreamReject(code=code, reason=reason))


# -- in memory ---------------------------------------------------------------


def test_core_answer_decides_whatever_was_written() -> None:
    proto = started()
    proto.open_stream(4, "svc", 0.0, stream_id=SID)
    assert proto.role(4) is Role.CONSUMER and proto.phase(4) is Phase.OPENING
    # The relay dropped our early bytes with the stream: one reject, then FIN.
    out = proto.receive(4, reject(503, "provider rejected"), True, 0.1)
    assert out == [ev.StreamRejected(4, SID, 503, "provider rejected")]
    assert proto.phase(4) is Phase.CLOSED and proto.role(4) is Role.CONSUMER
    # Accepted: the provider's answer to the early request is the first inbound data.
    proto.open_stream(8, "svc", 0.0, stream_id=SID + 1)
    out = proto.receive(8, b"HTTP/1.0 200 OK\r\n", False, 0.1)
    assert out == [ev.StreamOpened(8, SID + 1, "data"), ev.DataReceived(8, b"HTTP/1.0 200 OK\r\n")]
    assert proto.role(12) is None


_writers: list[asyncio.StreamWriter] = []  # a collected writer would close its transport


def _transport(session: StubSession) -> RelayStreamTransport:
    transport = RelayStreamTransport(session, 4, {"stream_id": SID})  # type: ignore[arg-type]
    _writers.append(open_stream_pair(transport)[1])
    return transport


def _close_writers() -> None:
    while _writers:
        _writers.pop().close()


def test_head_leaves_with_the_first_write() -> None:
    async def main() -> None:
        session = StubSession()
        transport = _transport(session)
        transport.send_head(b"<open>")
        transport.write(REQUEST)
        assert bytes(session.sent[4]) == b"<open>" + REQUEST
        await asyncio.sleep(0)
        assert bytes(session.sent[4]) == b"<open>" + REQUEST  # sent once

        alone = StubSession()
        transport = _transport(alone)
        transport.send_head(b"<open>")
        assert 4 not in alone.sent
        await asyncio.sleep(0)  # nothing written this iteration: the frame goes alone
        assert bytes(alone.sent[4]) == b"<open>"

        fin = StubSession()
        transport = _transport(fin)
        transport.send_head(b"<open>")
        transport.write_eof()
        assert bytes(fin.sent[4]) == b"<open>" and 4 in fin.fin

        aborted = StubSession()
        transport = _transport(aborted)
        transport.send_head(b"<open>")
        transport.abort()
        await asyncio.sleep(0)
        assert 4 not in aborted.sent
        _close_writers()

    asyncio.run(main())


def test_positions_count_early_bytes_in_memory() -> None:
    async def main() -> None:
        session = StubSession()
        transport = _transport(session)
        state = ResumableState(SID)
        assert transport.make_resumable(state)  # at the open, before any byte
        transport.send_head(b"<open>")
        transport.write(REQUEST)
        transport.write(b"more")
        early = len(REQUEST) + 4
        assert transport.sent == state.sent == early and state.ring_len == early
        assert bytes(session.sent[4]) == b"<open>" + REQUEST + b"more"
        assert state.checkpoint() == (early, 0)
        assert state.on_peer_checkpoint(early) and state.ring_len == 0
        # Without resume the counts survive the state being dropped.
        transport.stop_resuming()
        assert transport.state is None and transport.sent == early
        _close_writers()

    asyncio.run(main())


# -- over QUIC, SDK ----------------------------------------------------------


@pytest.mark.dataplane
def test_sdk_early_data_reaches_provider_before_accept(dev_pki: DevPKI) -> None:
    async def main() -> None:
        async with relay_and_agents(dev_pki, early=True) as (relay, provider, consumer):
            await provider.serve("echo", echo)
            reader, writer = await consumer.open_connection("echo", early_data=True)
            sid = writer.get_extra_info("stream_id")
            writer.write(REQUEST)
            writer.write_eof()
            assert await reader.read() == REQUEST
            assert bytes(relay.early[sid]) == REQUEST  # forwarded before STREAM_ACCEPT
            assert relay.with_open[sid] == REQUEST  # in the same packet as OPEN_STREAM
            writer.close()
            await writer.wait_closed()

    run(main())


@pytest.mark.dataplane
def test_sdk_early_data_reject_raises_on_read_and_drain(dev_pki: DevPKI) -> None:
    async def main() -> None:
        async with relay_and_agents(dev_pki, early=True, deny={"secret"}) as (_, _p, consumer):
            reader, writer = await consumer.open_connection("secret", early_data=True)
            writer.write(REQUEST)
            with pytest.raises(StreamRejected) as info:
                await reader.read()
            assert (info.value.code, info.value.reason) == (403, "denied: no matching rule")
            assert isinstance(info.value, ConnectionError)
            with pytest.raises(StreamRejected):
                await writer.drain()
            writer.write(b"dropped")  # like a closed socket transport: no error, nothing sent
            writer.close()

    run(main())


@pytest.mark.dataplane
def test_sdk_early_data_provider_reject_after_early_bytes(dev_pki: DevPKI) -> None:
    async def main() -> None:
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()
        async with relay_and_agents(dev_pki, early=True) as (relay, provider, consumer):
            await provider.expose("down", "127.0.0.1", port)
            reader, writer = await consumer.open_connection("down", early_data=True)
            sid = writer.get_extra_info("stream_id")
            writer.write(REQUEST)
            await writer.drain()
            with pytest.raises(StreamRejected) as info:
                await reader.read()
            assert info.value.code == 503
            assert bytes(relay.early[sid]) == REQUEST  # they reached the provider, then were lost
            assert relay.provider_rejects[-1][0] == 502
            writer.close()

    run(main())


@pytest.mark.dataplane
def test_default_open_still_waits_and_raises(dev_pki: DevPKI) -> None:
    async def main() -> None:
        async with relay_and_agents(dev_pki, early=True, deny={"secret"}) as (
            _,
            provider,
            consumer,
        ):
            with pytest.raises(StreamRejected) as info:
                await consumer.open_connection("secret")
            assert info.value.code == 403
            await provider.serve("echo", echo)
            reader, writer = await consumer.open_connection("echo")
            assert writer.transport.established  # type: ignore[attr-defined]
            writer.write(REQUEST)
            writer.write_eof()
            assert await reader.read() == REQUEST
            writer.close()

    run(main())


@pytest.mark.dataplane
def test_positions_count_early_bytes_over_quic(dev_pki: DevPKI) -> None:
    async def main() -> None:
        async with relay_and_agents(dev_pki, early=True) as (relay, provider, consumer):
            ends: list[RelayStreamTransport] = []
            release = asyncio.Event()

            async def slow_echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                ends.append(w.transport)  # type: ignore[arg-type]
                await release.wait()
                await echo(r, w)

            await provider.serve("echo", slow_echo)
            reader, writer = await consumer.open_connection("echo", early_data=True)
            mine: RelayStreamTransport = writer.transport  # type: ignore[assignment]
            sid = writer.get_extra_info("stream_id")
            early = os.urandom(200_000)
            writer.write(early)
            assert mine.state is not None and mine.state.sent == len(early)
            assert mine.state.ring_len == len(early)
            await wait_for(lambda: mine.established)
            assert relay.early[sid], "no byte went out before the provider's answer"
            late = b"after the answer"
            writer.write(late)
            release.set()
            got = await reader.readexactly(len(early) + len(late))  # the stream stays open
            assert got == early + late
            theirs = ends[0]
            assert theirs.state is not None
            assert mine.sent == theirs.received == len(early) + len(late)
            assert mine.received == theirs.sent == len(got)
            # The provider's checkpoints acknowledge the early bytes too: our ring empties.
            await wait_for(lambda: mine.state is not None and mine.state.peer_ack == mine.sent)
            assert mine.state is not None and mine.state.ring_len == 0
            writer.close()

    run(main())


# -- over QUIC, the CLI's consumer listener ------------------------------------


async def _exchange(addr: str, payload: bytes) -> bytes:
    """Like a client in another process: the request is sent before the agent accepts."""
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    got = bytearray()
    try:
        while data := await loop.sock_recv(sock, 65536):
            got += data
    finally:
        sock.close()
    return bytes(got)


@pytest.mark.dataplane
def test_listener_early_data_and_reject(dev_pki: DevPKI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "outrelay.agent")

    async def main() -> None:
        async with relay_and_agents(dev_pki, early=True, deny={"secret"}) as (
            relay,
            provider,
            consumer,
        ):
            await provider.serve("echo", echo)
            listeners = [
                ConsumerListener(consumer, Mapping.parse(f"{name}=127.0.0.1:0"))
                for name in ("echo", "secret")
            ]
            for listener in listeners:
                await listener.start()
            try:
                assert await _exchange(listeners[0].address, REQUEST) == REQUEST
                sid = relay.opened[-1].stream_id
                assert relay.with_open[sid] == REQUEST  # one flush: OPEN_STREAM and the request
                assert bytes(relay.early[sid]) == REQUEST
                payload = os.urandom(100_000)
                assert await _exchange(listeners[0].address, payload) == payload
                sid = relay.opened[-1].stream_id
                assert relay.early[sid], "no byte went out before the provider's answer"
                # Rejected: a clean close (EOF, not a reset), and a log line with the code.
                assert await _exchange(listeners[1].address, REQUEST) == b""
                await wait_for(lambda: "rejected: 403" in caplog.text)
                assert "stream to secret rejected: 403 denied: no matching rule" in caplog.text
            finally:
                for listener in listeners:
                    await listener.close()

    run(main())
