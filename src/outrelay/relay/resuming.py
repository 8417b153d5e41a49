"""Resume pairing: STREAM_RESUME / MIGRATE_TO_RELAY halves (relay.md §8-§9).

A data stream whose first frame is STREAM_RESUME or MIGRATE_TO_RELAY is a
half for :class:`~outrelay.relay.resume.ResumeMatcher`. When two halves
match, both echoes are written, the pair is recorded (so checkpoints for the
resumed stream are routable), then one StartSplice. A half that waits out the
window (``timer``) or is refused ends with a STREAM_REJECT (504 / 409 / 403).
"""

from __future__ import annotations

from typing import Any

from outrelay.observe import kv
from outrelay.orp import Frame, FrameType, OrpError, decode_message, encode_message
from outrelay.proto import orp_pb2
from outrelay.relay.actions import Action, Leg, Send, StartSplice
from outrelay.relay.audit import tenant_of
from outrelay.relay.errors import ResumeExpired
from outrelay.relay.resume import Half, HalfExpired, HalfRefused, HalvesMatched, MatchEvent
from outrelay.relay.state import CoreState, _Flow, _Phase, log


def _echo(stream_id: int, partner: Half) -> bytes:
    """STREAM_RESUME carrying the partner's counters (relay.md §8 step 4)."""
    msg = orp_pb2.StreamResume(
        stream_id=stream_id,
        my_position=partner.my_position,
        peer_ack_position=partner.peer_ack_position,
    )
    return encode_message(FrameType.STREAM_RESUME, msg)


class ResumeFlow(CoreState):
    """Resume halves: submit, match, expire."""

    # -- resume (relay.md §8-§9; resume.py) ---------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`timer` must run next (the core's clock), or None."""
        return self.matcher.next_deadline()

    def timer(self) -> list[Action]:
        """Time passed: end resume halves whose window is over."""
        return self._matched(self.matcher.expire(self.clock()))

    def _resume(self, flow: _Flow, frame: Frame) -> list[Action]:
        msg: Any
        try:
            if frame.type == FrameType.STREAM_RESUME:
                msg = decode_message(frame, FrameType.STREAM_RESUME, orp_pb2.StreamResume)
            else:
                msg = decode_message(frame, FrameType.MIGRATE_TO_RELAY, orp_pb2.MigrateToRelay)
        except OrpError:
            return self._end(flow)
        tenant = flow.tenant
        half = Half(
            flow.id,
            tenant,
            flow.consumer_uri,
            msg.stream_id,
            msg.my_position,
            msg.peer_ack_position,
            echo=frame.type == FrameType.STREAM_RESUME,
        )
        flow.half = half
        flow.phase = _Phase.RESUMING
        parties = None
        live = self.pairs.get(msg.stream_id) if msg.stream_id else None
        if live is not None and tenant_of(live.consumer) == tenant:
            parties = frozenset((live.consumer, live.provider))
        log.debug(
            "resume half",
            extra=kv(agent=flow.consumer_uri, stream_id=f"{msg.stream_id:016x}", type=frame.type),
        )
        return self._matched(self.matcher.submit(half, self.clock(), parties))

    def _matched(self, events: list[MatchEvent]) -> list[Action]:
        actions: list[Action] = []
        for event in events:
            if isinstance(event, HalvesMatched):
                actions += self._join(event.first, event.second)
                continue
            assert isinstance(event, HalfRefused | HalfExpired)
            flow = self._flows.get(event.half.handle)
            if flow is None:
                continue
            flow.half = None  # already out of the matcher
            if isinstance(event, HalfExpired):
                self.m_resume_timeouts.inc()
                window = self.matcher.window
                actions += self._reject(flow, ResumeExpired(f"resume: no peer within {window:g}s"))
            else:
                self.m_resume_refused.inc()
                actions += self._reject(flow, event.error)
        self.m_resume_pending.set(len(self.matcher))
        return actions

    def _join(self, h1: Half, h2: Half) -> list[Action]:
        """Two halves match: both echoes first, then exactly one splice (§8, Q1)."""
        f1 = self._flows[h1.handle]
        f2 = self._flows[h2.handle]
        f1.half = f2.half = None
        # f1 becomes the spliced flow and takes f2's stream as its second leg
        f1.provider_conn, f1.provider_stream = f2.conn, f2.stream
        f1.provider_uri, f1.provider_fin = f2.consumer_uri, f2.fin
        rest = bytes(f2.pending)
        self._streams[(f2.conn, f2.stream)] = f1
        f1.keys.append((f2.conn, f2.stream))
        agent2 = self._agents.get(f2.conn)
        if agent2 is not None:
            agent2.flows.discard(f2.id)
            agent2.flows.add(f1.id)
        del self._flows[f2.id]
        f2.phase = _Phase.DONE
        self.m_active.dec()
        # Record the pair so checkpoints and candidates for the resumed stream
        # are routable (the reference records none, relay.md §12); keep the
        # orientation of a live record of the same two agents.
        consumer, provider = h1.agent, h2.agent
        live = self.pairs.get(h1.stream_id)
        if live is not None and {live.consumer, live.provider} == {consumer, provider}:
            consumer, provider = live.consumer, live.provider
        # the resumed stream is the caller's stream again: it holds a slot
        # (never refused: the two agents already had it)
        self._take_slot(f1, consumer, provider, force=True)
        if self.pairs.record(h1.stream_id, consumer, provider):
            f1.pair_id = h1.stream_id
        else:
            log.warning(
                "resumed stream id held by another pair; not routable",
                extra=kv(stream_id=f"{h1.stream_id:016x}"),
            )
        self.m_resumed.inc()
        log.debug(
            "stream resumed",
            extra=kv(stream_id=f"{h1.stream_id:016x}", a=h1.agent, b=h2.agent),
        )
        # An echo is the core's own frame on that leg: its acknowledgement
        # earns the other leg no credit (``unacked``, as INCOMING_STREAM's).
        e1 = _echo(h1.stream_id, h2) if h1.echo else b""
        e2 = _echo(h2.stream_id, h1) if h2.echo else b""
        actions: list[Action] = []
        if e1:
            actions.append(Send(f1.conn, f1.stream, e1))
        if e2:
            actions.append(Send(f2.conn, f2.stream, e2))
        f1.phase = _Phase.SPLICED
        a = Leg(f1.conn, f1.stream, bytes(f1.pending), f1.fin, unacked=len(e1))
        b = Leg(f2.conn, f2.stream, rest, f2.fin, unacked=len(e2))
        f1.pending = bytearray()
        actions.append(StartSplice(f1.id, a, b))
        return actions
