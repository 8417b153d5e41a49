"""Happy eyeballs between QUIC and TCP (``outrelay.agent.dial``), with scripted dials.

The dials here are coroutines that succeed or fail after a set delay (the
real transports are exercised by tests/transport and tests/e2e); what is
under test is the race: who is dialled when, who wins, what happens to the
loser.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from outrelay.agent.dial import Candidate, candidates, race
from outrelay.agent.errors import ConnectFailed
from outrelay.transport.errors import HandshakeError

pytestmark = pytest.mark.timeout(10)


@dataclass
class FakeLink:
    name: str
    closed: bool = False

    def close(self, error_code: int = 0, reason: str = "") -> None:
        self.closed = True


@dataclass
class Script:
    """transport -> (delay, error or None); records when each dial started."""

    plan: dict[str, tuple[float, Exception | None]]
    started: dict[str, float] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    links: dict[str, FakeLink] = field(default_factory=dict)

    async def dial(self, transport: str, address: str) -> FakeLink:
        loop = asyncio.get_running_loop()
        self.started[transport] = loop.time()
        delay, error = self.plan[transport]
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled.add(transport)
            raise
        if error is not None:
            raise error
        link = self.links[transport] = FakeLink(transport)
        return link


BOTH = Candidate("127.0.0.1:7443", "127.0.0.1:7444")


def run_race(script: Script, candidate: Candidate = BOTH) -> tuple[str, float, object]:
    async def main() -> tuple[str, float, object]:
        t0 = asyncio.get_running_loop().time()
        transport, _, link = await race(candidate, script.dial)  # type: ignore[arg-type]
        for key in script.started:
            script.started[key] -= t0
        return transport, asyncio.get_running_loop().time() - t0, link

    return asyncio.run(main())


def test_quic_within_head_start_wins_and_tcp_is_never_dialled() -> None:
    script = Script({"quic": (0.05, None), "tcp": (0.0, None)})
    transport, _, _ = run_race(script)
    assert transport == "quic"
    assert "tcp" not in script.started


def test_quic_failing_fast_starts_tcp_at_once() -> None:
    script = Script({"quic": (0.01, HandshakeError("connection refused")), "tcp": (0.02, None)})
    transport, took, _ = run_race(script)
    assert transport == "tcp"
    assert script.started["tcp"] < 0.2  # not after the 250 ms head start
    assert took < 0.2


def test_slow_quic_gets_250ms_then_tcp_wins_and_quic_is_cancelled() -> None:
    script = Script({"quic": (5.0, None), "tcp": (0.05, None)})
    transport, took, _ = run_race(script)
    assert transport == "tcp"
    assert 0.2 <= script.started["tcp"] < 0.5
    assert took < 1.0
    assert "quic" in script.cancelled


def test_quic_still_wins_if_it_finishes_first_after_tcp_started() -> None:
    script = Script({"quic": (0.3, None), "tcp": (2.0, None)})
    transport, _, _ = run_race(script)
    assert transport == "quic"
    assert "tcp" in script.cancelled


def test_both_fail_connect_failed_names_both() -> None:
    script = Script({"quic": (0.0, OSError("unreachable")), "tcp": (0.0, OSError("refused"))})
    with pytest.raises(ConnectFailed, match="quic .*unreachable.*tcp .*refused"):
        run_race(script)


def test_single_transport_candidates_dial_only_that_one() -> None:
    script = Script({"quic": (0.0, None), "tcp": (0.0, None)})
    transport, _, _ = run_race(script, Candidate(None, "127.0.0.1:1"))
    assert transport == "tcp" and "quic" not in script.started


def test_candidates_pair_by_position_and_follow_transport() -> None:
    both = candidates(["a:1", "b:1"], ["a:2"], "auto")
    assert both == [Candidate("a:1", "a:2"), Candidate("b:1", None)]
    assert candidates(["a:1"], ["a:2"], "quic") == [Candidate("a:1", None)]
    assert candidates(["a:1"], ["a:2"], "tcp") == [Candidate(None, "a:2")]
    with pytest.raises(ValueError, match="--relay-tcp"):
        candidates(["a:1"], [], "tcp")
    with pytest.raises(ValueError, match="auto, quic or tcp"):
        candidates(["a:1"], [], "udp")
