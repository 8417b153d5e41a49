"""Acceptance (issue 5), streams: real controller, relay and agent processes on 127.0.0.1.

Rules (added with the operator CLI): ``allow-all`` (``*`` -> ``*``) and
``deny-denied`` (``*`` -> ``svc-denied``; DENY wins). The provider agent
exposes ``svc-echo`` and ``svc-live`` (a TCP echo backend) and ``svc-down``
(a port nobody listens on); the consumer agent has a local listener for each
service below. Reject codes are read from the consumer's log line (it closes
the local connection on a reject); 409 needs chosen stream ids, so it is
driven with probe agents against the real provider agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from outrelay.agent.testing import free_port
from outrelay.orp import FrameType
from outrelay.proto import orp_pb2

from .conftest import AgentProcess, Stack, exchange, run_async, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MiB = 1024 * 1024
CONSUMED = ("svc-echo", "svc-denied", "svc-missing", "svc-down", "svc-live", "svc-gone")


@dataclass
class World:
    stack: Stack
    echo: str
    provider: AgentProcess
    consumer: AgentProcess
    down_port: int


@pytest.fixture(scope="module")
def world(stack: Stack, echo_backend: str) -> Iterator[World]:
    stack.policy_add("allow-all", "*", "allow")
    stack.policy_add("deny-denied", "svc-denied", "deny")
    down = free_port()
    provider = stack.agent(
        "provider",
        who="provider",
        expose={
            "svc-echo": echo_backend,
            "svc-live": echo_backend,
            "svc-down": f"127.0.0.1:{down}",
        },
    )
    consumer = stack.agent("consumer", who="consumer", consume=CONSUMED)
    yield World(stack, echo_backend, provider, consumer, down)


def outcome(consumer: AgentProcess, service: str, payload: bytes = b"x") -> bytes | tuple[int, str]:
    """A stream through the consumer agent: the bytes echoed, or (code, reason) of its reject."""
    before = len(consumer.rejections(service))
    got = exchange(consumer.consume_addr(service), payload, timeout=10)
    if got:
        return got
    new = wait_for(lambda: consumer.rejections(service)[before:], 10, f"reject of {service}")
    assert len(new) == 1, new
    return new[0]


def refused(consumer: AgentProcess, service: str) -> tuple[int, str]:
    """Open a stream that must be rejected; its (code, reason)."""
    result = outcome(consumer, service)
    assert isinstance(result, tuple), f"{service} answered {result!r}"
    return result


# -- data ------------------------------------------------------------------------


@pytest.mark.slow
def test_64_mib_each_way_sha256(world: World) -> None:
    size, chunk = 64 * MiB, MiB
    sent, got = hashlib.sha256(), hashlib.sha256()
    received = 0
    start = time.monotonic()
    with socket.create_connection(world.consumer.consume_addr("svc-echo"), timeout=60) as sock:

        def send() -> None:
            rng = random.Random(64)
            for _ in range(size // chunk):
                data = rng.randbytes(chunk)
                sent.update(data)
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        while data := sock.recv(MiB):
            got.update(data)
            received += len(data)
        sender.join(60)
    took = time.monotonic() - start
    assert not sender.is_alive()
    assert received == size
    assert got.hexdigest() == sent.hexdigest()
    print(f"\n64 MiB each way in {took:.1f}s: {size / MiB / took:.1f} MiB/s per direction")


def test_1000_sequential_streams_byte_exact(world: World) -> None:
    addr = world.consumer.consume_addr("svc-echo")
    rng = random.Random(1000)
    start = time.monotonic()
    for i in range(1000):
        payload = i.to_bytes(4, "big") + rng.randbytes(rng.randrange(0, 4096))
        assert exchange(addr, payload, timeout=10) == payload, f"stream {i}"
    took = time.monotonic() - start
    print(f"\n1000 sequential streams in {took:.1f}s ({1000 / took:.0f}/s)")


def test_200_concurrent_streams_byte_exact(world: World) -> None:
    host, port = world.consumer.consume_addr("svc-echo")

    async def one(i: int) -> bool:
        payload = i.to_bytes(4, "big") + os.urandom(16 * 1024)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(payload)
        writer.write_eof()
        got = await reader.read()
        writer.close()
        return got == payload

    async def main() -> list[bool]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    start = time.monotonic()
    results = run_async(main, 120)
    assert all(results), f"{results.count(False)} of 200 streams differ"
    print(f"\n200 concurrent streams in {time.monotonic() - start:.1f}s")


# -- rejects -----------------------------------------------------------------------


def test_policy_denied_403_with_reason(world: World) -> None:
    assert refused(world.consumer, "svc-denied") == (403, "denied: deny-denied")


def test_unknown_service_404(world: World) -> None:
    assert refused(world.consumer, "svc-missing") == (404, "service not found")


def test_backend_down_503_provider_rejected(world: World) -> None:
    # The provider agent answers 502 with the dial error; the relay replaces
    # any provider reject with 503 "provider rejected" (relay.md, B11).
    assert refused(world.consumer, "svc-down") == (503, "provider rejected")
    want = f"rejecting incoming stream: 502 dial tcp 127.0.0.1:{world.down_port}"
    wait_for(lambda: want in world.provider.log(), 10, "provider's 502")


def test_stream_id_collision_409(world: World) -> None:
    async def main() -> None:
        first, second = await world.stack.probe(), await world.stack.probe()
        s1 = first.open("svc-echo", stream_id=0x5EED0409)
        s1.write(b"a")
        assert await s1.read_exactly(1) == b"a"  # spliced to the real provider agent
        s2 = second.open("svc-echo", stream_id=0x5EED0409)
        frame = await s2.read_frame()
        assert frame.type == FrameType.STREAM_REJECT, frame
        reject = orp_pb2.StreamReject.FromString(frame.payload)
        assert (reject.code, reject.reason) == (409, "stream id collision")
        assert await s2.ended()
        s1.write(b"b", fin=True)  # the first stream is unaffected
        assert await s1.read_to_eof() == b"b"

    run_async(main)


# -- live changes ---------------------------------------------------------------------


def test_policy_add_and_remove_take_effect_within_1s(world: World) -> None:
    consumer = world.consumer
    assert outcome(consumer, "svc-live") == b"x"
    took = {}
    for change, want in (("add", (403, "denied: deny-live")), ("remove", b"x")):
        if change == "add":
            world.stack.policy_add("deny-live", "svc-live", "deny")
        else:
            world.stack.policy_remove("deny-live")
        start = time.monotonic()  # the CLI has returned: the controller committed it
        while (got := outcome(consumer, "svc-live")) != want:
            assert time.monotonic() - start < 1.0, f"{change}: still {got!r} after 1s"
        took[change] = time.monotonic() - start
    print(f"\npolicy change effective after: add {took['add']:.3f}s, remove {took['remove']:.3f}s")


def test_provider_agent_stopped_deregistered_404(world: World) -> None:
    gone = world.stack.agent("gone-provider", expose={"svc-gone": world.echo})
    assert outcome(world.consumer, "svc-gone", b"hello") == b"hello"
    assert gone.stop() == 0
    start = time.monotonic()
    # The relay deregisters the agent as soon as its connection ends.
    while (got := outcome(world.consumer, "svc-gone")) != (404, "service not found"):
        assert time.monotonic() - start < 5, f"svc-gone: {got!r}"
    print(f"\nprovider stopped -> 404 after {time.monotonic() - start:.3f}s")
    rows = world.stack.cli("registry", "list", "--service", "svc-gone", "-o", "json")
    assert gone.uri not in rows


def test_one_audit_event_per_decision(world: World) -> None:
    # Fresh identities, so that only this test's decisions carry them.
    stack = world.stack
    provider = stack.agent("audit-provider", expose={"svc-audit": world.echo})
    consumer = stack.agent("audit-consumer", consume=("svc-audit", "svc-denied", "svc-missing"))
    assert exchange(consumer.consume_addr("svc-audit"), b"ok", timeout=10) == b"ok"
    assert refused(consumer, "svc-denied")[0] == 403
    assert refused(consumer, "svc-missing")[0] == 404

    def settled() -> bool:
        m = stack.metrics()
        return m["gauges"]["audit_queue_depth"] == 0 and len(stack.audit(caller=consumer.uri)) >= 3

    wait_for(settled, 10, "audit events stored", interval=0.1)
    caller_side = sorted(
        (r["target"], r["decision"], r["reason"]) for r in stack.audit(caller=consumer.uri)
    )
    assert caller_side == [
        ("svc-audit", "allow", "allow-all"),  # then resolved, callee side below
        ("svc-denied", "deny", "deny-denied"),  # no Resolve, no callee side
        ("svc-missing", "allow", "allow-all"),  # then 404: no provider, no callee side
    ]
    callee_side = stack.audit(caller=provider.uri)
    assert [(r["target"], r["decision"]) for r in callee_side] == [(consumer.uri, "allow")]
    for agent in (consumer, provider):
        assert agent.stop() == 0
