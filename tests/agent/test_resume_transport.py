"""The stream transport across a lost relay leg: the application sees a pause, never an error."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from outrelay.agent.errors import StreamLost
from outrelay.agent.resume import ResumableState, ResumePhase
from outrelay.agent.stream import RelayStreamTransport, open_stream_pair

SID = 0xABC


def run(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in a fresh event loop (no pytest-asyncio here)."""

    @functools.wraps(fn)
    def wrapper() -> None:
        asyncio.run(asyncio.wait_for(fn(), 10))

    return wrapper


@dataclass
class _Link:
    addr: tuple[str, int] = ("127.0.0.1", 7443)


@dataclass
class StubSession:
    """What a RelayStreamTransport calls on its session, recorded."""

    link: _Link = field(default_factory=_Link)
    sent: dict[int, bytearray] = field(default_factory=dict)
    fin: set[int] = field(default_factory=set)
    aborted: list[tuple[int, int]] = field(default_factory=list)
    buffered: int = 0

    def send(self, qid: int, data: bytes, end_stream: bool = False) -> None:
        self.sent.setdefault(qid, bytearray()).extend(data)
        if end_stream:
            self.fin.add(qid)

    def send_buffered(self, qid: int) -> int:
        return self.buffered

    def grant_all(self, qid: int) -> None:
        pass

    def stop_reading(self, qid: int) -> None:
        pass

    def abort_stream(self, qid: int, code: int = 0) -> None:
        self.aborted.append((qid, code))

    def stream_finished(self, qid: int, transport: Any) -> None:
        pass

    def stream_detached(self, qid: int, transport: Any) -> None:
        pass


def _pair(
    session: StubSession, **kw: Any
) -> tuple[RelayStreamTransport, asyncio.StreamReader, asyncio.StreamWriter]:
    transport = RelayStreamTransport(session, 4, {"stream_id": SID}, high_water=1000)  # type: ignore[arg-type]
    reader, writer = open_stream_pair(transport)
    transport.established = True
    assert transport.make_resumable(ResumableState(SID, **kw))
    return transport, reader, writer


@run
async def test_pause_then_resume_resends_the_gap_and_goes_on() -> None:
    old = StubSession()
    t, reader, writer = _pair(old)
    writer.write(b"A" * 300)
    t.feed_data(b"hello")
    assert await reader.readexactly(5) == b"hello"
    assert bytes(old.sent[4]) == b"A" * 300

    assert t.detach(1.0, "session lost")
    assert t.state is not None and t.state.phase is ResumePhase.DETACHED
    assert not t.is_closing()  # the application sees nothing
    writer.write(b"B" * 200)  # written during the pause: into the ring only
    assert bytes(old.sent[4]) == b"A" * 300
    t.write_eof()
    read = asyncio.ensure_future(reader.read(100))
    await asyncio.sleep(0)
    assert not read.done()  # a read just waits

    new = StubSession()
    t.attach(new, 8)  # type: ignore[arg-type]
    assert t.state.resume_request() == (SID, 500, 5)
    t.resumed(7, 120, 2.0)  # the partner got 120 of ours and sent 7 in all
    assert bytes(new.sent[8]) == b"A" * 180 + b"B" * 200
    assert 8 in new.fin  # the FIN written during the pause follows the gap
    t.feed_data(b"lo")  # partner re-sends from the 5 we had: "lo" is new
    assert await read == b"lo"
    t.feed_eof()
    assert await reader.read() == b""
    assert t.finished and t.error is None


@run
async def test_writes_block_during_the_pause_past_the_high_water_mark() -> None:
    t, _, writer = _pair(StubSession())
    t.detach(0.0, "lost")
    writer.write(b"x" * 1500)  # > high water (1000) unacknowledged
    drain = asyncio.ensure_future(writer.drain())
    await asyncio.sleep(0)
    assert not drain.done()
    new = StubSession()
    t.attach(new, 8)  # type: ignore[arg-type]
    assert t.state is not None
    t.state.resume_request()
    t.resumed(0, 1500, 1.0)  # the peer had it all: nothing to resend, not buffered
    await asyncio.wait_for(drain, 1)
    writer.close()


@run
async def test_give_up_is_a_reset_for_the_application() -> None:
    t, reader, writer = _pair(StubSession())
    t.detach(0.0, "lost")
    t.give_up("not resumed within the resume window (3 s)")
    with pytest.raises(StreamLost) as info:
        await reader.read(1)
    assert isinstance(info.value, ConnectionResetError)
    assert "resume window" in str(info.value)
    assert t.state is not None and t.state.phase is ResumePhase.CLOSED


@run
async def test_overrun_ring_fails_at_once_and_evicted_echo_resets() -> None:
    t, reader, writer = _pair(StubSession(), ring_min=16, ring_max=16)
    writer.write(b"y" * 64)
    assert not t.can_resume  # unacknowledged bytes left the ring
    assert not t.detach(0.0, "lost")
    with pytest.raises(StreamLost):
        await reader.read(1)

    t2, reader2, writer2 = _pair(StubSession(), ring_min=16, ring_max=16)
    writer2.write(b"z" * 10)
    t2.detach(0.0, "lost")
    writer2.write(b"z" * 10)  # now 20 > 16 unacknowledged
    new = StubSession()
    t2.attach(new, 8)  # type: ignore[arg-type]
    assert t2.state is not None
    t2.state.resume_request()
    t2.resumed(0, 0, 1.0)
    assert new.aborted == [(8, 0)]  # the relay passes the reset to the partner
    with pytest.raises(StreamLost, match="evicted"):
        await reader2.read(1)


@run
async def test_close_during_the_pause_flushes_after_resume() -> None:
    t, reader, writer = _pair(StubSession())
    t.detach(0.0, "lost")
    writer.write(b"last words")
    writer.close()
    assert not t.finished  # still has to reach the peer
    new = StubSession()
    t.attach(new, 8)  # type: ignore[arg-type]
    assert t.state is not None
    t.state.resume_request()
    t.resumed(0, 0, 1.0)
    assert bytes(new.sent[8]) == b"last words" and 8 in new.fin
    assert t.finished


@run
async def test_a_fast_live_stream_pauses_before_its_ring_overruns() -> None:
    """The relay drains at once (TCP speed): unacknowledged bytes pile up in the ring
    only; the writer pauses at 3/4 of ring_max and resumes below 1/2 on the peer's
    checkpoint, so the stream stays resumable (no overrun)."""
    session = StubSession()  # send_buffered 0: the transport takes everything at once
    t, _, writer = _pair(session, ring_min=1024, ring_max=8192)
    writer.write(b"y" * 7000)  # > 3/4 of 8192 unacknowledged by the peer
    drain = asyncio.ensure_future(writer.drain())
    await asyncio.sleep(0)
    assert not drain.done()
    t.send_capacity(0)  # the relay took it all: still paused (the ring is full)
    await asyncio.sleep(0)
    assert not drain.done()
    t.peer_checkpoint(4000)  # the peer's application has 4000: ring 3000 < 4096
    await asyncio.wait_for(drain, 1)
    assert t.state is not None and t.state.ring_len == 3000
    assert t.can_resume
    writer.close()
