"""Duplicate sessions end to end (issue 12, finding 5): real relay, controller and agents.

Finding 5 was: a second session with the provider's identity (HELLO, then
closed after 0.5 s, or a second ``outrelay agent`` stopped with Ctrl-C) made
the relay send DeregisterAgent although the first session was up; every open
got 404 until the provider restarted. The rule now (docs/relay.md
"Duplicate sessions"): sessions of one identity may overlap, the newest takes
over the identity, a registration belongs to the session that made it, and
the agent is deregistered only when its last session here ends.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .conftest import AgentProcess, Stack, exchange, run_async, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

#: Streams checked after each event; every one must succeed (no retry).
ROUNDS = 10


@dataclass
class World:
    stack: Stack
    echo: str
    provider: AgentProcess
    consumer: AgentProcess


@pytest.fixture(scope="module")
def world(stack: Stack, echo_backend: str) -> Iterator[World]:
    stack.policy_add("allow-all", "*", "allow")
    provider = stack.agent("provider", who="provider", expose={"web": echo_backend})
    consumer = stack.agent("consumer", who="consumer", consume=["web"])
    wait_for(
        lambda: exchange(consumer.consume_addr("web"), b"warm", timeout=5) == b"warm",
        30,
        "first stream through the relay",
        interval=0.2,
    )
    yield World(stack, echo_backend, provider, consumer)


def _sessions(stack: Stack) -> int:
    return int(stack.metrics()["gauges"]["agents_connected"])


def _all_succeed(world: World, what: str) -> None:
    for i in range(ROUNDS):
        payload = f"{what} {i}".encode()
        got = exchange(world.consumer.consume_addr("web"), payload, timeout=10)
        assert got == payload, f"{what}: stream {i} got {got!r}; {world.consumer.rejections('web')}"


def _deregistered(stack: Stack) -> bool:
    assert stack.relay is not None
    return "agent disconnected" in stack.relay.log()


def test_duplicate_hello_session_that_closes_keeps_the_provider_registered(
    world: World,
) -> None:
    stack = world.stack
    before = _sessions(stack)

    async def duplicate() -> None:
        probe = await stack.probe("provider")  # HELLO with the provider's identity
        assert _sessions(stack) == before + 1
        _all_succeed(world, "while the duplicate is up")
        await probe.aclose()

    run_async(duplicate)
    wait_for(lambda: _sessions(stack) == before, 10, "duplicate session gone")
    _all_succeed(world, "after the duplicate closed")
    assert not _deregistered(stack)
    assert "session lost" not in world.provider.log()  # the first session was never touched


def test_second_agent_process_stopped_with_sigint_keeps_the_service(world: World) -> None:
    stack = world.stack
    before = _sessions(stack)
    second = stack.agent("provider-2", who="provider", expose={"web": world.echo})
    wait_for(lambda: _sessions(stack) == before + 1, 10, "second session up")
    _all_succeed(world, "with two sessions")  # the newer session serves
    second.signal(signal.SIGINT)
    assert second.proc is not None and second.proc.wait(15) == 0
    wait_for(lambda: _sessions(stack) == before, 10, "second session gone")
    _all_succeed(world, "after the second agent stopped")
    assert not _deregistered(stack)
    assert "session lost" not in world.provider.log()


def test_old_agent_stopping_after_the_new_one_is_up_keeps_the_service(world: World) -> None:
    stack = world.stack
    before = _sessions(stack)
    new = stack.agent("provider-new", who="provider", expose={"web": world.echo})
    wait_for(lambda: _sessions(stack) == before + 1, 10, "new session up")
    _all_succeed(world, "with two sessions")
    world.provider.signal(signal.SIGINT)
    assert world.provider.proc is not None and world.provider.proc.wait(15) == 0
    wait_for(lambda: _sessions(stack) == before, 10, "old session gone")
    _all_succeed(world, "after the old agent stopped")
    assert not _deregistered(stack)
    assert "session lost" not in new.log()
