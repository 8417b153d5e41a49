"""The resume matcher: pairing the two halves of a stream after a reconnect (relay.md §8-§9).

How this works
--------------
When an agent's session to a relay dies, it reconnects (to this relay or any
other of its list) and opens one fresh data stream per live stream whose
first frame is STREAM_RESUME ``{stream_id, my_position, peer_ack_position}``
(or MIGRATE_TO_RELAY, coming back from P2P). The other agent of the stream
does the same. Each such stream is a *half*; this module pairs them.

* Halves are keyed by ``(tenant, stream_id)``: halves of different tenants
  never meet (the reference keys by stream id alone and pairs anything).
* Stream id 0 means "no id" (relay.md §17 Q10) and is refused.
* The first half of a key waits, at most ``window`` seconds (30 s,
  ``--resume-window``). When it runs out the half is told
  :class:`HalfExpired` and the core ends its stream with a reject.
* A second half from *another* agent URI matches it: :class:`HalvesMatched`.
  The core then writes both echoes and starts exactly one splice.
* A second half from the *same* agent URI never pairs with the first: it
  replaces it (the agent retried, e.g. its previous session died again
  while its first half waited). The older half is told
  :class:`HalfRefused` ("superseded") and the newer one waits with a fresh
  window.
* When the relay knows which two agents own the stream -- it spliced it
  (the core passes the live pair) or saw it end less than ``window``
  seconds ago (:meth:`ResumeMatcher.remember`) -- a half from any other
  agent is refused. When it does not know (another relay, or this one
  restarted) pairing works without history, with the rules above.

Sans-IO: time is passed in; the core asks :meth:`ResumeMatcher.next_deadline`
and the shell calls :meth:`ResumeMatcher.expire` (through the core) then.
"""

from __future__ import annotations

from dataclasses import dataclass

from outrelay.relay.errors import RelayError, ResumeDenied, ResumeRefused

#: Default pairing window, seconds (relay.md §19 ``ResumeWindow``).
RESUME_WINDOW_S = 30.0

Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Half:
    """One side of a stream asking to be resumed."""

    #: The core's handle for the half's stream (its flow number).
    handle: int
    #: Tenant of the agent that sent it.
    tenant: str
    #: URI of the agent that sent it.
    agent: str
    #: The stream being resumed.
    stream_id: int
    #: Bytes this agent has written into the stream so far (its SentPos).
    my_position: int
    #: Bytes of the peer this agent has delivered (its RecvPos).
    peer_ack_position: int
    #: STREAM_RESUME (True: answered with an echo) or MIGRATE_TO_RELAY (False).
    echo: bool = True

    @property
    def key(self) -> Key:
        """What halves are matched on."""
        return (self.tenant, self.stream_id)


class MatchEvent:
    """Base class of matcher outcomes."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HalvesMatched(MatchEvent):
    """Two halves belong together: echo both, then splice them once."""

    #: The half that waited.
    first: Half
    #: The half that completed the pair.
    second: Half


@dataclass(frozen=True, slots=True)
class HalfRefused(MatchEvent):
    """A half will never be paired; its stream ends with ``error``."""

    #: The refused half.
    half: Half
    #: Why (carries the STREAM_REJECT code).
    error: RelayError


@dataclass(frozen=True, slots=True)
class HalfExpired(MatchEvent):
    """A half waited the whole window without a partner."""

    #: The half that timed out.
    half: Half


class ResumeMatcher:
    """Pending halves per (tenant, stream id), with deadlines and pair history."""

    def __init__(self, window: float = RESUME_WINDOW_S) -> None:
        self.window = window
        self._pending: dict[Key, tuple[Half, float]] = {}
        self._by_handle: dict[int, Key] = {}
        #: (tenant, id) -> (the two agent URIs, forget after)
        self._known: dict[Key, tuple[frozenset[str], float]] = {}

    def __len__(self) -> int:
        """Halves waiting for a partner."""
        return len(self._pending)

    def remember(self, tenant: str, stream_id: int, a: str, b: str, now: float) -> None:
        """Note that agents ``a`` and ``b`` own ``stream_id`` (kept ``window`` seconds)."""
        if stream_id:
            self._known[(tenant, stream_id)] = (frozenset((a, b)), now + self.window)

    def parties(self, tenant: str, stream_id: int, now: float) -> frozenset[str] | None:
        """The two agents known to own the stream, or None."""
        known = self._known.get((tenant, stream_id))
        if known is None:
            return None
        if now >= known[1]:
            del self._known[(tenant, stream_id)]
            return None
        return known[0]

    def submit(
        self, half: Half, now: float, parties: frozenset[str] | None = None
    ) -> list[MatchEvent]:
        """A new half arrived; return what follows (maybe nothing: it waits).

        ``parties``: the two agents of the stream if the caller knows them
        (a live splice); otherwise the matcher's own history is used.
        """
        if half.stream_id == 0:
            return [HalfRefused(half, ResumeRefused("resume: stream id 0 cannot be resumed"))]
        known = parties if parties is not None else self.parties(*half.key, now)
        if known is not None and half.agent not in known:
            return [HalfRefused(half, ResumeDenied())]
        events: list[MatchEvent] = []
        waiting = self._pending.get(half.key)
        if waiting is not None:
            other = waiting[0]
            if other.agent != half.agent:
                self._drop(half.key)
                return [HalvesMatched(other, half)]
            self._drop(half.key)
            events.append(HalfRefused(other, ResumeRefused()))
        self._pending[half.key] = (half, now + self.window)
        self._by_handle[half.handle] = half.key
        return events

    def withdraw(self, handle: int) -> Half | None:
        """The half's stream or connection went away: forget it."""
        key = self._by_handle.get(handle)
        if key is None:
            return None
        return self._drop(key)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do (None: nothing waits)."""
        if not self._pending:
            return None
        return min(deadline for _, deadline in self._pending.values())

    def expire(self, now: float) -> list[MatchEvent]:
        """Time out every half whose window is over; also prune old history."""
        out: list[MatchEvent] = []
        for key, (half, deadline) in list(self._pending.items()):
            if now >= deadline:
                self._drop(key)
                out.append(HalfExpired(half))
        for key, (_, until) in list(self._known.items()):
            if now >= until:
                del self._known[key]
        return out

    def _drop(self, key: Key) -> Half | None:
        entry = self._pending.pop(key, None)
        if entry is None:
            return None
        self._by_handle.pop(entry[0].handle, None)
        return entry[0]
