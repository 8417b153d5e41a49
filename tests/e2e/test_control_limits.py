"""Bounded control frames at a real relay process (issue 12, finding 7).

The attack: a connection's control stream carries a frame header declaring
16 MiB, then as much payload as flow control lets through. Before the fix the
relay's decoder reserved the declared 16 MiB at once and the relay granted
the payload (10 connections: +82 MiB). Now the header alone is refused: the
relay closes the connection with the reason, holds none of the payload, and
keeps serving legitimate agents.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from outrelay.orp import MAX_CONTROL_PAYLOAD, FrameType
from outrelay.relay.testing import ProbeAgent

from .conftest import Stack, exchange, run_async

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

HUGE = 16 * 1024 * 1024
REASON = (
    f"control stream: orp: frame header declares {HUGE} payload bytes, "
    f"over the limit of {MAX_CONTROL_PAYLOAD}"
)
#: Payload each attacker tries to push after its header.
PUSH = 4 * 1024 * 1024
ATTACKERS = 10
#: Allowed relay growth (VmRSS and VmHWM) over the whole attack.
BOUND = 20 * 1024 * 1024


def header(length: int, ftype: int = FrameType.REGISTER) -> bytes:
    """A version-1 header built independently of the codec."""
    return ((1 << 13) | ftype).to_bytes(2, "big") + b"\x00\x00" + length.to_bytes(4, "big")


def status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in bytes, from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


async def attack(stack: Stack, *, hello: bool) -> list[tuple[str, bool]]:
    """``ATTACKERS`` connections send a 16 MiB header (+ PUSH bytes); how each was closed."""
    assert stack.relay is not None
    agents: list[ProbeAgent] = []
    for _ in range(ATTACKERS):
        if hello:
            agent = await stack.probe()
        else:
            cert, key = stack.leaf("probe")
            agent = await ProbeAgent.dial(stack.relay.quic, cert, key, stack.ca)
            assert agent.link.open_stream() == 0
        agent.control.write(header(HUGE) + b"\xaa" * PUSH)
        agents.append(agent)
    closed = await asyncio.gather(*(a.wait_closed(timeout=15) for a in agents))
    for agent in agents:
        await agent.aclose()
    return [(c.reason, c.by_us) for c in closed]


def test_oversized_control_frames_close_connections_and_memory_stays_bounded(
    stack: Stack, echo_backend: str
) -> None:
    pid = stack.relay_pid
    # warm the relay's code paths (a session, a closed connection) before the baseline
    run_async(lambda: attack_one(stack), 30)
    before = status(pid)

    closes = run_async(lambda: attack(stack, hello=True), 60)

    assert closes == [(REASON, False)] * ATTACKERS
    after = status(pid)
    grown = {k: after[k] - before[k] for k in after}
    assert grown["VmRSS"] < BOUND and grown["VmHWM"] < BOUND, (before, after)
    log = stack.relay.log() if stack.relay else ""
    assert log.count("reject conn") >= ATTACKERS and "over the limit of 65536" in log

    # the relay still serves: a provider and a consumer agent (real processes) splice
    stack.policy_add("allow-all", "*", "allow")
    stack.agent("limits-provider", expose={"svc-limits": echo_backend})
    consumer = stack.agent("limits-consumer", consume=["svc-limits"])
    payload = bytes(range(256)) * 512
    assert exchange(consumer.consume_addr("svc-limits"), payload) == payload


def test_oversized_header_as_first_control_frame_closes_before_hello(stack: Stack) -> None:
    closes = run_async(lambda: attack(stack, hello=False), 60)
    assert closes == [(REASON, False)] * ATTACKERS


def test_control_frame_at_the_limit_is_served(stack: Stack) -> None:
    async def main() -> None:
        agent = await stack.probe()
        # an unknown frame type of exactly MAX_CONTROL_PAYLOAD bytes is read and ignored
        agent.control.write(header(MAX_CONTROL_PAYLOAD, 0x7FF) + b"\x00" * MAX_CONTROL_PAYLOAD)
        agent.control.send_frame(FrameType.PING)
        assert (await agent.control_frame(10)).type == FrameType.PONG
        assert not agent.closed.done()

    run_async(main, 30)


async def attack_one(stack: Stack) -> None:
    agent = await stack.probe()
    agent.control.write(header(HUGE))
    closed = await agent.wait_closed(timeout=15)
    assert closed.reason == REASON
