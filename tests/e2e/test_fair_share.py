"""Fair share end to end (issue 12, finding 3): real relay, controller and agents.

Finding 3 was: the provider's connection accepted 128 relay-opened streams;
one caller with 2 connections x 127 never-read streams filled them and
consumers of a *different* service on that provider hung (no reject). Now
the relay caps one caller's concurrent streams per provider
(``--max-streams-per-caller``, 256), the provider allows 1024, and an open
beyond a limit is refused at once with a 503.
"""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from outrelay.identity import peer_uri
from outrelay.orp import FrameType
from outrelay.proto import orp_pb2
from outrelay.relay.testing import ProbeAgent, ProbeStream

from .conftest import AgentProcess, Stack, exchange, run_async, tcp_server, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.dataplane, pytest.mark.timeout(180)]

#: The relay's and the agent's default per-caller limit.
LIMIT = 256
#: Never-read streams per flooding connection (2 connections: more than LIMIT).
PER_CONN = 150

_release = threading.Event()


class _Hold(socketserver.BaseRequestHandler):
    """A backend that accepts and then neither reads nor answers."""

    def handle(self) -> None:
        _release.wait(120)


@dataclass
class World:
    stack: Stack
    provider: AgentProcess
    consumer: AgentProcess
    hold: str


@pytest.fixture(scope="module")
def world(stack: Stack, echo_backend: str) -> Iterator[World]:
    stack.policy_add("allow-all", "*", "allow")
    with tcp_server(_Hold) as hold:
        provider = stack.agent(
            "provider", who="provider", expose={"slow": hold, "web": echo_backend}
        )
        consumer = stack.agent("consumer", who="consumer", consume=["web"])
        # the relay has the rule once a stream goes through
        wait_for(
            lambda: exchange(consumer.consume_addr("web"), b"warm", timeout=5) == b"warm",
            30,
            "first stream through the relay",
            interval=0.2,
        )
        try:
            yield World(stack, provider, consumer, hold)
        finally:
            _release.set()


async def _dial_as(stack: Stack, cert_key: tuple[object, object]) -> ProbeAgent:
    cert, key = cert_key
    assert stack.relay is not None
    agent = await ProbeAgent.dial(stack.relay.quic, cert, key, stack.ca)  # type: ignore[arg-type]
    assert (await agent.hello()).type == FrameType.HELLO_ACK
    return agent


async def _ended(streams: list[ProbeStream], want: int, timeout: float) -> list[ProbeStream]:
    """Wait until ``want`` of ``streams`` have ended (the relay's reject ends one)."""
    deadline = time.monotonic() + timeout
    while True:
        done = [s for s in streams if s._rx.eof or s._rx.reset is not None]
        if len(done) >= want or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.02)


async def _rejects(streams: list[ProbeStream]) -> list[tuple[int, str]]:
    out = []
    for stream in streams:
        frame = await stream.read_frame(timeout=2)
        assert frame.type == FrameType.STREAM_REJECT, frame
        msg = orp_pb2.StreamReject.FromString(frame.payload)
        out.append((msg.code, msg.reason))
    return out


def test_flood_of_never_read_streams_leaves_other_service_answering_under_1s(
    world: World,
) -> None:
    stack = world.stack
    flooder = stack.leaf("flooder")  # one caller identity, two connections

    async def main() -> tuple[list[tuple[int, str]], float, int, float, bytes]:
        conns = [await _dial_as(stack, flooder) for _ in range(2)]
        t0 = time.monotonic()
        streams = [c.open("slow") for c in conns for _ in range(PER_CONN)]
        ended = await _ended(streams, 2 * PER_CONN - LIMIT, timeout=5)
        took = time.monotonic() - t0
        rejects = await _rejects(ended)
        # the rest were accepted by the provider: STREAM_READY on the control streams
        ready = 0
        for c in conns:
            while ready < LIMIT:
                try:
                    frame = await c.control_frame(timeout=2)
                except TimeoutError:
                    break
                ready += frame.type == FrameType.STREAM_READY
        # meanwhile another caller of another service on that provider
        start = time.monotonic()
        got = await asyncio.to_thread(
            exchange, world.consumer.consume_addr("web"), b"still here", 10
        )
        return rejects, took, ready, time.monotonic() - start, got

    rejects, took, ready, elapsed, got = run_async(main, limit=60)
    assert len(rejects) == 2 * PER_CONN - LIMIT, f"{len(rejects)} rejects within {took:.2f}s"
    assert set(rejects) == {(503, "caller stream limit reached")}
    assert ready == LIMIT
    assert got == b"still here"
    assert elapsed < 1.0, f"web took {elapsed:.3f}s while slow was flooded"
    assert stack.metrics()["counters"]["stream_rejects_503"] >= 2 * PER_CONN - LIMIT


def test_agent_rejects_incoming_streams_beyond_its_per_caller_limit(world: World) -> None:
    stack = world.stack
    small = stack.agent("provider-small", expose={"slow-small": world.hold},
                        args=["--max-streams-per-caller", "4"])  # fmt: skip

    async def main() -> list[tuple[int, str]]:
        caller = await stack.probe()
        streams = [caller.open("slow-small") for _ in range(6)]
        ended = await _ended(streams, 2, timeout=5)
        return await _rejects(ended)

    # the relay replaces a provider's code and reason (relay.md §17 Q3)
    assert run_async(main, limit=30) == [(503, "provider rejected")] * 2
    small.wait_log("caller stream limit", count=2, timeout=10)


def test_provider_without_stream_credit_gets_503_at_once(world: World) -> None:
    stack = world.stack

    async def main() -> tuple[list[tuple[int, str]], int]:
        assert stack.relay is not None
        # a provider whose QUIC connection allows the relay 3 concurrent streams
        cert, key = stack.leaf("tiny-provider")
        stack.ctl.allow_bind(peer_uri(cert.read_bytes()), "tiny")
        provider = await ProbeAgent.dial(stack.relay.quic, cert, key, stack.ca, max_streams=3)
        assert (await provider.hello()).type == FrameType.HELLO_ACK
        assert (await provider.register_bound("tiny")).type == FrameType.REGISTER_ACK
        caller = await stack.probe()
        streams = [caller.open("tiny") for _ in range(5)]
        ended = await _ended(streams, 2, timeout=5)
        rejects = await _rejects(ended)
        return rejects, provider.incoming.qsize()

    rejects, incoming = run_async(main, limit=30)
    assert rejects == [(503, "provider stream limit reached")] * 2
    assert incoming == 3
