"""Splice: copy bytes both ways between two QUIC streams with bounded memory.

How this works
--------------
A splice joins leg A (the consumer's stream) and leg B (the provider's).
Each direction (A->B, B->A) is independent:

* Bytes received on the source leg go straight to the destination leg's
  ``send`` (no copy loop, no buffer of our own). They stay *unconsumed* on
  the source: the transport only lets the source peer send ``window`` bytes
  beyond what we granted.
* When the destination's peer acknowledges data (``SendCapacityAvailable``),
  that many bytes are granted back to the source. So per direction the relay
  holds at most the stream window (default 1 MiB), and per connection at
  most the connection window (16 MiB), however slow the destination is.
* FIN on the source is forwarded as FIN on the destination (half-close: the
  other direction keeps going). A reset of the source's sending side is
  forwarded as a reset of the destination's; STOP_SENDING from a
  destination peer becomes STOP_SENDING toward the source peer.
* When both directions have ended, or either connection closed, the splice
  is over and ``on_end`` runs once.
* A splice can start with one direction already under way (:meth:`Splice.early`):
  the core forwarded a consumer's early data before the provider accepted.
  Those bytes count as held (granted when acknowledged), and bytes the core
  wrote on the destination itself (INCOMING_STREAM) are skipped when its
  acknowledgements come in, so they are no credit for the source.

The payload is never inspected. A leg is anything with the small
:class:`LegIO` interface (``outrelay.transport.Link`` in the relay).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from outrelay.observe import REGISTRY, Registry
from outrelay.relay.actions import acked_credit
from outrelay.transport.errors import TransportError

log = logging.getLogger("outrelay.relay")

#: Application error code we use when we reset or stop a stream ourselves.
SPLICE_ABORTED = 0x101


class LegIO(Protocol):
    """What a splice needs from a connection."""

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...

    def grant(self, stream_id: int, n: int) -> int: ...

    def reset_stream(self, stream_id: int, error_code: int) -> None: ...

    def stop_stream(self, stream_id: int, error_code: int) -> None: ...


class SpliceMeters:
    """The metrics every splice updates, looked up once (not per splice)."""

    __slots__ = ("bytes", "held", "active")

    def __init__(self, metrics: Registry = REGISTRY) -> None:
        self.bytes = metrics.counter("bytes_forwarded")
        self.held = metrics.gauge("splice_buffer_bytes")
        self.active = metrics.gauge("splices_active")


class _Direction:
    """One way of a splice: bytes from ``src`` to ``dst``."""

    __slots__ = ("src", "src_stream", "dst", "dst_stream", "held", "skip", "done")

    def __init__(self, src: LegIO, src_stream: int, dst: LegIO, dst_stream: int) -> None:
        self.src = src
        self.src_stream = src_stream
        self.dst = dst
        self.dst_stream = dst_stream
        #: bytes received from src, sent on dst, not yet granted back to src
        self.held = 0
        #: bytes on dst written by someone else (the core), still unacknowledged
        self.skip = 0
        #: FIN or reset forwarded; nothing more flows this way
        self.done = False


class Splice:
    """Both directions between leg A and leg B; see the module docstring."""

    def __init__(
        self,
        a: LegIO,
        a_stream: int,
        b: LegIO,
        b_stream: int,
        *,
        on_end: Callable[[Splice], None] = lambda s: None,
        meters: SpliceMeters | None = None,
    ) -> None:
        """``meters`` (one :class:`SpliceMeters` for all splices) saves the lookups per splice."""
        self.a, self.a_stream, self.b, self.b_stream = a, a_stream, b, b_stream
        self.ab = _Direction(a, a_stream, b, b_stream)
        self.ba = _Direction(b, b_stream, a, a_stream)
        self.on_end = on_end
        self.ended = False
        if meters is None:
            meters = SpliceMeters()
        self.m_bytes = meters.bytes
        self.m_held = meters.held
        self.m_active = meters.active
        self.m_active.inc()

    def _from(self, leg: LegIO, stream: int) -> _Direction:
        if leg is self.a and stream == self.a_stream:
            return self.ab
        return self.ba

    def _to(self, leg: LegIO, stream: int) -> _Direction:
        if leg is self.a and stream == self.a_stream:
            return self.ba
        return self.ab

    def early(self, leg: LegIO, stream: int, sent: int, fin_sent: bool, unacked: int) -> None:
        """What the core did on ``leg`` before the splice started.

        ``sent`` bytes read from it are already on the other leg, ungranted;
        ``fin_sent``: its FIN was forwarded too; ``unacked`` bytes the core
        wrote on it are not acknowledged yet. Call before any input.
        """
        d = self._from(leg, stream)
        if sent:
            d.held += sent
            self.m_held.set(self.m_held.value + sent)
        d.done = d.done or fin_sent
        self._to(leg, stream).skip += unacked

    # -- inputs ---------------------------------------------------------------

    def data(self, leg: LegIO, stream: int, data: bytes, fin: bool) -> None:
        """Bytes (and/or FIN) arrived on one leg: pass them to the other."""
        d = self._from(leg, stream)
        if d.done:
            return
        try:
            if data:
                d.dst.send(d.dst_stream, data, fin)
                d.held += len(data)
                self.m_held.set(self.m_held.value + len(data))
                self.m_bytes.add(len(data))
            elif fin:
                d.dst.send(d.dst_stream, b"", True)
        except TransportError:
            # the destination cannot take more (reset by its peer, closing):
            # nothing more can flow this way, tell the source to stop
            self._stop(d)
            self._quiet(d.src.stop_stream, d.src_stream, SPLICE_ABORTED)
            self._check_end()
            return
        if fin:
            d.done = True
            self._check_end()

    def drained(self, leg: LegIO, stream: int, n: int) -> None:
        """The peer of ``leg`` acknowledged ``n`` bytes: grant them to the source."""
        d = self._to(leg, stream)
        g, d.skip = acked_credit(n, d.skip, d.held)
        if g <= 0:
            return
        d.held -= g
        self.m_held.set(self.m_held.value - g)
        d.src.grant(d.src_stream, g)

    def reset(self, leg: LegIO, stream: int, code: int) -> None:
        """The peer of ``leg`` reset its sending side: reset the other leg's."""
        d = self._from(leg, stream)
        if d.done:
            return
        self._stop(d)
        self._quiet(d.dst.reset_stream, d.dst_stream, code)
        self._check_end()

    def stop_sending(self, leg: LegIO, stream: int, code: int) -> None:
        """The peer of ``leg`` wants no more data: ask the other peer to stop too."""
        d = self._to(leg, stream)
        if d.done:
            return
        self._stop(d)
        self._quiet(d.src.stop_stream, d.src_stream, code)
        self._check_end()

    def connection_closed(self, leg: LegIO) -> None:
        """A leg's connection is gone: abort the other leg both ways and end."""
        other, other_stream = (self.b, self.b_stream) if leg is self.a else (self.a, self.a_stream)
        for d in (self.ab, self.ba):
            self._stop(d)
        self._quiet(other.reset_stream, other_stream, SPLICE_ABORTED)
        self._quiet(other.stop_stream, other_stream, SPLICE_ABORTED)
        self._check_end()

    def abort(self) -> None:
        """Tear both legs down (relay shutting down)."""
        for d in (self.ab, self.ba):
            self._stop(d)
        for leg, stream in ((self.a, self.a_stream), (self.b, self.b_stream)):
            self._quiet(leg.reset_stream, stream, SPLICE_ABORTED)
            self._quiet(leg.stop_stream, stream, SPLICE_ABORTED)
        self._check_end()

    # -- internals ------------------------------------------------------------

    def _stop(self, d: _Direction) -> None:
        """Nothing more flows this way; its unacknowledged bytes no longer count as ours."""
        d.done = True
        if d.held:
            self.m_held.set(self.m_held.value - d.held)
            d.held = 0

    @staticmethod
    def _quiet(fn: Callable[[int, int], None], stream: int, code: int) -> None:
        try:
            fn(stream, code)
        except TransportError:
            pass

    def _check_end(self) -> None:
        if self.ended or not (self.ab.done and self.ba.done):
            return
        self.ended = True
        self._stop(self.ab)
        self._stop(self.ba)
        self.m_active.dec()
        try:
            self.on_end(self)
        except Exception:  # the shell's bookkeeping must not break the caller
            log.exception("splice end hook failed")
