"""Bounded control frames at the agent (issue 12, finding 7).

A relay (here the in-test fake relay over real QUIC) that sends a control
frame header declaring more than MAX_CONTROL_PAYLOAD gets its connection
closed by the agent with the reason, before any payload is read; the agent
then reconnects as after any lost session.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from outrelay.agent import Agent
from outrelay.agent import events as ev
from outrelay.agent.core import AgentProtocol
from outrelay.orp import MAX_CONTROL_PAYLOAD, FrameType, encode_message
from outrelay.proto import orp_pb2 as pb
from outrelay.transport import ConnectionClosed, Link
from outrelay.transport import events as tev

from .conftest import DevPKI
from .fakerelay import AgentConn, FakeRelay

pytestmark = pytest.mark.dataplane

URI = "outrelay://acme/agent/00000000-0000-0000-0000-000000000002"
HUGE = 16 * 1024 * 1024
REASON = f"control stream: orp: frame header declares {HUGE} payload bytes, over the limit of 65536"


def header(length: int, ftype: int = FrameType.PONG) -> bytes:
    return ((1 << 13) | ftype).to_bytes(2, "big") + b"\x00\x00" + length.to_bytes(4, "big")


def test_agent_core_refuses_oversized_control_header_before_payload() -> None:
    proto = AgentProtocol(URI)
    proto.hello(0, now=0.0)
    ack = encode_message(FrameType.HELLO_ACK, pb.HelloAck())
    assert proto.receive(0, ack + header(HUGE)[:6], False, 0.0) == [ev.HelloAcknowledged("")]
    assert proto.receive(0, header(HUGE)[6:], False, 0.0) == [ev.ProtocolViolated(REASON)]
    assert proto.receive(0, b"x" * 1000, False, 0.0) == []  # the rest is never parsed


def test_agent_core_accepts_control_frame_at_the_limit() -> None:
    proto = AgentProtocol(URI)
    proto.hello(0, now=0.0)
    proto.receive(0, encode_message(FrameType.HELLO_ACK, pb.HelloAck()), False, 0.0)
    frame = header(MAX_CONTROL_PAYLOAD, 0x7FF) + b"\x00" * MAX_CONTROL_PAYLOAD
    (out,) = proto.receive(0, frame, False, 0.0)
    assert isinstance(out, ev.ControlFrameIgnored)  # unknown type, ignored: no violation


def test_agent_closes_relay_connection_on_oversized_control_frame(dev_pki: DevPKI) -> None:
    async def main() -> None:
        relay = FakeRelay(dev_pki.relay_config())
        await relay.start()
        agent = Agent(dev_pki.agent_config("consumer", [relay.address]))
        closed: asyncio.Future[ConnectionClosed] = asyncio.get_running_loop().create_future()
        try:
            await agent.start()
            (conn,) = relay.conns
            assert conn.uri is not None and conn.control is not None
            watch(conn, closed)
            conn.link.send(conn.control, header(HUGE))
            async with asyncio.timeout(10):
                event = await closed
            assert (event.reason, event.by_us) == (REASON, False)
            # the agent treats it as a lost session and comes back
            async with asyncio.timeout(20):
                while not any(c.uri for c in relay.conns if c is not conn):
                    await asyncio.sleep(0.02)
        finally:
            await agent.stop()
            await relay.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def watch(conn: AgentConn, closed: asyncio.Future[ConnectionClosed]) -> None:
    """Record the ConnectionClosed of ``conn``'s link, keeping the fake relay's own handling."""
    inner = conn.link.on_event

    def on_event(link: Link, event: tev.Event) -> Any:
        if isinstance(event, ConnectionClosed) and not closed.done():
            closed.set_result(event)
        return inner(link, event)

    conn.link.on_event = on_event
