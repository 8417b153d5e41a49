"""Stream resume, sans-IO: positions, the ring of unacknowledged bytes, checkpoints, the FSM.

How this works
--------------
Every relay data stream of an agent carries a :class:`ResumableState`
(wire.md §6.3, agent.md §4, §7.3, §8):

* ``sent`` (SentPos) counts the bytes the application wrote. Each byte is
  also written to an adaptive ring (``outrelay.resume.RingBuffer``, the
  compiled one when built) and stays there until the peer's checkpoint says
  its application has it (``peer_ack``, PeerAckPos): ring head == ``sent``.
* ``recv`` (RecvPos) counts the bytes handed to our application.
* :meth:`checkpoint` returns ``(sent, recv)`` when bytes flowed (either way)
  since the previous call and ``None`` otherwise. The shell calls it every
  100 ms (``CHECKPOINT_PERIOD_MS``) and sends STREAM_CHECKPOINT only for a
  non-``None`` answer, so an idle stream sends nothing.
* :meth:`on_peer_checkpoint` frees the ring below the peer's
  ``peer_ack_position`` (monotonic). The ring doubles on overflow and halves
  at most once per effective discard while under a quarter full (the
  spec's hysteresis); a ring left empty above its minimum after a burst is
  replaced by a fresh minimum-size one (positions are kept by an offset),
  so an idle stream holds ``ring_min`` bytes at most.

Phases (a table, applied by :meth:`ResumableState._move`)::

    LIVE --detach--> DETACHED --resume_request--> RESUMING --resumed--> LIVE
      |                 |   ^--------detach (that session died too)----|
      +-------------+---+----------------- fail ------------------------+--> CLOSED

``detach`` records when the stream was lost; the stream must be LIVE again
before ``lost_at + window`` (:meth:`expired`), or the shell fails it.
:meth:`resume_request` gives the STREAM_RESUME positions; :meth:`resumed`
takes the relay's echo (the partner's positions), checks them and returns
the bytes to retransmit: ``[partner's peer_ack_position, sent)`` from the
ring. Bytes the partner re-sends that we already delivered (it re-sends from
the ``recv`` we advertised) are dropped by :meth:`filter_inbound`.
"""

from __future__ import annotations

from enum import IntEnum

from outrelay.resume import (
    DEFAULT_MIN_RING_CAPACITY,
    DEFAULT_RING_CAPACITY,
    RESUME_WINDOW_S,
    PositionEvicted,
    RingBuffer,
)
from outrelay.resume.errors import ResumeError


class ResumePhase(IntEnum):
    """Where a resumable stream is."""

    LIVE = 0
    DETACHED = 1
    RESUMING = 2
    CLOSED = 3


#: Legal phase changes.
TRANSITIONS: dict[ResumePhase, frozenset[ResumePhase]] = {
    ResumePhase.LIVE: frozenset({ResumePhase.DETACHED, ResumePhase.CLOSED}),
    ResumePhase.DETACHED: frozenset({ResumePhase.RESUMING, ResumePhase.CLOSED}),
    ResumePhase.RESUMING: frozenset({ResumePhase.LIVE, ResumePhase.DETACHED, ResumePhase.CLOSED}),
    ResumePhase.CLOSED: frozenset({ResumePhase.CLOSED}),
}


class IllegalResumePhase(RuntimeError):
    """A phase change the table forbids (our bug)."""


class ResumeInconsistent(ResumeError):
    """The partner's positions cannot be true (it claims bytes that were never sent)."""


class ResumableState:
    """Positions, ring and resume phase of one stream; see the module docstring."""

    __slots__ = (
        "stream_id",
        "sent",
        "recv",
        "peer_ack",
        "phase",
        "window",
        "lost_at",
        "resumed_at",
        "_ring",
        "_base",
        "_min",
        "_max",
        "_flowed",
        "_advertised_recv",
        "_skip",
        "_recv_checkpointed",
    )

    def __init__(
        self,
        stream_id: int,
        *,
        ring_min: int = DEFAULT_MIN_RING_CAPACITY,
        ring_max: int = DEFAULT_RING_CAPACITY,
        window: float = RESUME_WINDOW_S,
    ) -> None:
        self.stream_id = stream_id
        #: SentPos: bytes the application wrote.
        self.sent = 0
        #: RecvPos: bytes handed to the application.
        self.recv = 0
        #: PeerAckPos: the highest ``recv`` the peer reported.
        self.peer_ack = 0
        self.phase = ResumePhase.LIVE
        #: Seconds a lost stream may take to become LIVE again.
        self.window = window
        #: When the stream was lost (``None`` while it has never been).
        self.lost_at: float | None = None
        #: When it last became LIVE again after a loss.
        self.resumed_at: float | None = None
        self._min = ring_min
        self._max = ring_max
        self._ring = RingBuffer.adaptive(ring_min, ring_max)
        self._base = 0  # absolute position of the ring's position 0
        self._flowed = False
        self._advertised_recv = 0
        self._skip = 0
        self._recv_checkpointed = 0  # ``recv`` at the last checkpoint

    # -- ring view ----------------------------------------------------------

    @property
    def ring_capacity(self) -> int:
        """Bytes the ring may hold now (it grows and shrinks between min and max)."""
        return self._ring.capacity

    @property
    def ring_max(self) -> int:
        """The most bytes the ring may hold (more unacknowledged: no resume)."""
        return self._max

    @property
    def ring_len(self) -> int:
        """Bytes held in the ring (sent, not yet acknowledged by the peer)."""
        return len(self._ring)

    @property
    def ring_tail(self) -> int:
        """Absolute position of the oldest byte still held."""
        return self._base + self._ring.tail

    @property
    def resumable(self) -> bool:
        """False once the ring evicted bytes the peer has not acknowledged (overrun)."""
        return self.ring_tail <= self.peer_ack

    # -- data -----------------------------------------------------------------

    def on_write(self, data: bytes | bytearray | memoryview) -> None:
        """The application wrote ``data``: keep it in the ring, advance ``sent``."""
        n = self._ring.write(data)
        if n:
            self.sent += n
            self._flowed = True

    def filter_inbound(self, data: bytes) -> bytes:
        """Drop the duplicate prefix of re-sent bytes; count the rest as delivered."""
        if self._skip:
            cut = min(self._skip, len(data))
            self._skip -= cut
            data = data[cut:]
        if data:
            self.recv += len(data)
            self._flowed = True
        return data

    def on_peer_checkpoint(self, peer_ack: int) -> bool:
        """The peer delivered our bytes up to ``peer_ack``; free them. True if it advanced.

        Positions beyond ``sent`` are clamped (a confused peer cannot make us
        free bytes it never got).
        """
        peer_ack = min(peer_ack, self.sent)
        if peer_ack <= self.peer_ack:
            return False
        self.peer_ack = peer_ack
        self._ring.discard(peer_ack - self._base)
        if not len(self._ring) and self._ring.capacity > self._min:
            # Empty after a burst: start over at the minimum instead of waiting
            # for more traffic to halve the capacity step by step.
            self._ring = RingBuffer.adaptive(self._min, self._max)
            self._base = self.sent
        return True

    @property
    def checkpoint_due(self) -> bool:
        """True once a quarter of the peer's ring (taken as our ``ring_max``) was
        received since the last checkpoint: checkpoint now, not at the next tick.

        The peer pauses its writers at 3/4 of its ring unacknowledged; at
        TCP speed that fills between two 100 ms ticks, so a fast stream is
        acknowledged by volume as well as by time.
        """
        return self.recv - self._recv_checkpointed >= self._max // 4

    def checkpoint(self) -> tuple[int, int] | None:
        """``(sent, recv)`` if bytes flowed since the last call (and the stream is LIVE)."""
        if not self._flowed or self.phase is not ResumePhase.LIVE:
            return None
        self._flowed = False
        self._recv_checkpointed = self.recv
        return self.sent, self.recv

    # -- resume -----------------------------------------------------------

    def detach(self, now: float) -> None:
        """The stream's relay leg is gone (reset 0x101 or session lost). Idempotent."""
        if self.phase is ResumePhase.DETACHED:
            return
        if self.phase is ResumePhase.LIVE:
            self.lost_at = now
        self._move(ResumePhase.DETACHED)

    @property
    def deadline(self) -> float | None:
        """When a lost stream gives up (``None`` while LIVE or CLOSED)."""
        if self.lost_at is None or self.phase not in (ResumePhase.DETACHED, ResumePhase.RESUMING):
            return None
        return self.lost_at + self.window

    def expired(self, now: float) -> bool:
        """True when a lost stream ran out of time."""
        deadline = self.deadline
        return deadline is not None and now >= deadline

    def resume_request(self) -> tuple[int, int, int]:
        """Going to send STREAM_RESUME: ``(stream_id, my_position, peer_ack_position)``."""
        self._move(ResumePhase.RESUMING)
        self._advertised_recv = self.recv
        return self.stream_id, self.sent, self.recv

    def resumed(self, partner_sent: int, partner_recv: int, now: float) -> bytes:
        """The relay's echo arrived; returns the bytes to retransmit first.

        Raises:
            PositionEvicted: ``partner_recv`` is older than the ring's tail
                (ring overrun): the stream cannot resume.
            ResumeInconsistent: the partner claims to have received more than
                we sent, or to have sent less than we delivered.
        """
        if self.phase is not ResumePhase.RESUMING:
            raise IllegalResumePhase(f"resume: echo in phase {self.phase.name}")
        if partner_recv > self.sent:
            raise ResumeInconsistent(
                f"resume: peer acknowledges {partner_recv} bytes, only {self.sent} were sent"
            )
        if partner_sent < self.recv:
            raise ResumeInconsistent(
                f"resume: peer sent {partner_sent} bytes, {self.recv} were already delivered"
            )
        if partner_recv < self.ring_tail:
            raise PositionEvicted(
                f"resume: position {partner_recv} evicted from ring (tail {self.ring_tail})"
            )
        gap = self._ring.bytes_from(partner_recv - self._base)
        self.on_peer_checkpoint(partner_recv)
        # The partner re-sends from the recv we advertised; anything we
        # delivered beyond it (late bytes of the old leg) comes again.
        self._skip = self.recv - self._advertised_recv
        self._move(ResumePhase.LIVE)
        self.resumed_at = now
        self._flowed = True  # tell the peer where we stand soon
        return gap

    @property
    def pause(self) -> float | None:
        """Seconds between the last loss and the resume that ended it."""
        if self.lost_at is None or self.resumed_at is None or self.resumed_at < self.lost_at:
            return None
        return self.resumed_at - self.lost_at

    def fail(self) -> None:
        """The stream cannot resume (or ended): nothing more happens to it."""
        self._move(ResumePhase.CLOSED)

    def _move(self, to: ResumePhase) -> None:
        if to not in TRANSITIONS[self.phase]:
            raise IllegalResumePhase(f"resume: {self.phase.name} -> {to.name}")
        self.phase = to

    def __repr__(self) -> str:
        return (
            f"<ResumableState id={self.stream_id:#x} {self.phase.name} sent={self.sent} "
            f"recv={self.recv} peer_ack={self.peer_ack} ring={self.ring_len}/{self.ring_capacity}>"
        )
