"""One relay data stream as an asyncio transport, so it plugs into StreamReader/Writer.

How this works
--------------
:class:`RelayStreamTransport` is an :class:`asyncio.Transport` over one QUIC
stream of a relay session. It is paired with an ordinary
:class:`asyncio.StreamReaderProtocol`, so applications get a real
``StreamReader`` and ``StreamWriter`` (:func:`open_stream_pair`).

Backpressure both ways, with asyncio's own hooks:

* **Sending.** ``write`` queues on the QUIC stream; when the stream's
  unacknowledged bytes exceed the high-water mark the protocol's
  ``pause_writing`` runs, so ``writer.drain()`` blocks until the relay
  acknowledges enough (``SendCapacityAvailable``) to fall under the low mark.
* **Receiving.** QUIC credit is granted back only while the reader is not
  paused: ``StreamReader`` calls ``pause_reading`` when its buffer passes
  twice its limit, and from then on nothing more is granted, so the relay
  can send at most one receive window more until the application reads.

Early data: a consumer stream opened with ``early_data`` holds its
OPEN_STREAM frame as the *head* (:meth:`send_head`): it is queued just
before the first write, FIN or close of the same event-loop iteration, or
alone at the end of it, so a request written right after the open leaves in
the same flush as the frame. Writes before the relay's answer go out at
once, under the same backpressure.

Half-close: ``write_eof`` sends FIN; the peer's FIN feeds EOF to the reader.
The protocol's ``connection_lost`` runs once both sides finished, on
``close``/``abort``, or when the session dies.

``sent`` and ``received`` count application bytes. A resumable stream
keeps them in its :class:`~outrelay.agent.resume.ResumableState` (``state``)
with the ring of bytes the peer has not acknowledged.

Resume: the session and QUIC stream id (the *inner* stream) are held in one
place (``_session``, ``qid``). When the relay leg is lost (reset 0x101, or
the whole session), :meth:`detach` drops them but the transport stays open:
the application sees a pause. Writes go on into the ring (``drain`` blocks
once more than the high-water mark is unacknowledged); reads simply wait.
:meth:`attach` binds a fresh resume stream, and :meth:`resumed` (the relay's
echo) re-sends the gap from the ring, then the stream is live again. A
stream that cannot resume ends with :class:`StreamLost` (a
``ConnectionResetError``); a local TCP peer gets a reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from outrelay.agent.errors import StreamLost
from outrelay.agent.resume import ResumableState, ResumePhase
from outrelay.resume import ResumeError

if TYPE_CHECKING:
    from outrelay.agent.session import Session

#: Default high-water mark of a stream's unacknowledged send bytes.
DEFAULT_HIGH_WATER = 1024 * 1024
#: StreamReader limit: it pauses reading beyond twice this.
READER_LIMIT = 64 * 1024


class RelayStreamTransport(asyncio.Transport):
    """An :class:`asyncio.Transport` over one QUIC stream of a relay session."""

    def __init__(
        self,
        session: Session,
        qid: int,
        extra: dict[str, Any],
        *,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> None:
        super().__init__(extra)
        self._extra: dict[str, Any] = extra
        self._session: Session | None = session
        self.qid = qid
        self._protocol: asyncio.BaseProtocol | None = None
        self._high = high_water
        self._low = high_water // 4
        self._write_paused = False
        self._read_paused = False
        self._eof_sent = False
        self._eof_received = False
        self._closing = False
        self._finished = False
        self._close_pending = False  # closed while detached: FIN once resumed
        self._head: bytes | None = None  # OPEN_STREAM still to be queued (early data)
        self._sent = 0
        self._received = 0
        #: Positions, ring and resume phase (``None``: the stream cannot resume).
        self.state: ResumableState | None = None
        #: True once the stream carries application bytes (opened / accepted).
        self.established = False
        #: Called when bytes flow (the owner arms its checkpoint timer); the
        #: argument is True when a checkpoint is due at once (received volume).
        self.on_flow: Callable[[bool], None] | None = None
        #: Called once when the relay leg is lost and the stream waits to resume.
        self.on_detached: Callable[[RelayStreamTransport], None] | None = None
        #: Called when a lost stream is live again (after the gap was re-sent).
        self.on_resumed: Callable[[RelayStreamTransport], None] | None = None
        #: Called once when the stream is over (the owner forgets it).
        self.on_finished: Callable[[RelayStreamTransport], None] | None = None
        #: Why the stream ended (``None``: normally, or not yet).
        self.error: Exception | None = None

    @property
    def sent(self) -> int:
        """Application bytes written (SentPos)."""
        return self.state.sent if self.state is not None else self._sent

    @property
    def received(self) -> int:
        """Application bytes handed to the protocol (RecvPos)."""
        return self.state.recv if self.state is not None else self._received

    @property
    def live(self) -> bool:
        """True while bytes go straight to a relay stream (not lost, not resuming)."""
        if self._session is None or self._finished:
            return False
        return self.state is None or self.state.phase is ResumePhase.LIVE

    @property
    def finished(self) -> bool:
        """True once the stream is over."""
        return self._finished

    @property
    def session(self) -> Session | None:
        """The session of the current inner stream (``None`` while lost)."""
        return self._session

    def make_resumable(self, state: ResumableState) -> bool:
        """Keep positions and a ring from now on; False if bytes were already sent."""
        if self._sent or self._finished:
            return False
        state.recv = self._received
        self.state = state
        return True

    def stop_resuming(self) -> None:
        """Drop the positions and the ring (the stream can no longer resume); counts stay."""
        state, self.state = self.state, None
        if state is not None:
            self._sent, self._received = state.sent, state.recv

    def send_head(self, frame: bytes) -> None:
        """Queue ``frame`` first on the stream: with the first write of this iteration, or alone.

        The consumer's OPEN_STREAM on the early-data path: a write made right
        after the open goes out in the same flush (one packet, not two).
        """
        self._head = frame
        asyncio.get_running_loop().call_soon(self._flush_head)

    # -- asyncio.BaseTransport -------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing or self._finished

    def close(self) -> None:
        """Finish our side (FIN after queued bytes), stop reading, and end the stream."""
        if self._closing or self._finished:
            return
        self._closing = True
        if not self.live and self.state is not None and self.state.phase is not ResumePhase.CLOSED:
            # Lost or resuming: what was written still has to reach the peer.
            self._eof_sent = True
            self._close_pending = True
            return
        self._flush_head()
        session = self._session
        if session is not None:
            if not self._eof_sent:
                self._eof_sent = True
                session.send(self.qid, b"", end_stream=True)
            if not self._eof_received:
                session.stop_reading(self.qid)
        self._finish(None)

    # -- asyncio.ReadTransport -------------------------------------------

    def is_reading(self) -> bool:
        return not self._read_paused and not self._finished

    def pause_reading(self) -> None:
        self._read_paused = True

    def resume_reading(self) -> None:
        if not self._read_paused:
            return
        self._read_paused = False
        if self.live and self._session is not None:
            self._session.grant_all(self.qid)

    # -- asyncio.WriteTransport ------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._check_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return self._buffered()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` on the stream.

        Raises RuntimeError after :meth:`write_eof`. Writes after ``close`` or
        after the stream was lost are dropped, as asyncio's socket transports do.
        """
        if self._eof_sent and not self._closing:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._closing or self._finished:
            return
        chunk = bytes(data)
        state = self.state
        if state is None:
            if self._session is None:
                return
            self._sent += len(chunk)
        else:
            state.on_write(chunk)
            if self.on_flow is not None:
                self.on_flow(False)
        if self.live:
            assert self._session is not None
            self._flush_head()
            self._session.send(self.qid, chunk)
        self._check_pause()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """Half-close: send FIN; reading goes on until the peer's FIN."""
        if self._eof_sent or self._closing or self._finished:
            return
        self._eof_sent = True
        if self.live:
            assert self._session is not None
            self._flush_head()
            self._session.send(self.qid, b"", end_stream=True)
        if self._eof_received and (self.live or self.state is None):
            self._finish(None)

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        """Reset both directions (RESET_STREAM + STOP_SENDING) and end the stream."""
        if self._finished:
            return
        self._closing = True
        if self._session is not None:
            self._session.abort_stream(self.qid)
        self._finish(None)

    # -- called by the session -------------------------------------------

    def feed_data(self, data: bytes) -> None:
        """Application bytes arrived.

        Credit goes back from the session once the event is handled, unless
        the reader is paused by then (:meth:`is_reading`).
        """
        if self._finished or self._protocol is None:
            return
        if self.state is None:
            self._received += len(data)
        else:
            data = self.state.filter_inbound(data)
            if not data:
                return
            if self.on_flow is not None:
                self.on_flow(self.state.checkpoint_due)
        self._protocol.data_received(data)  # type: ignore[attr-defined]

    def feed_eof(self) -> None:
        """The peer finished its side (FIN)."""
        if self._eof_received or self._finished or self._protocol is None:
            return
        self._eof_received = True
        if self.on_flow is not None:
            self.on_flow(False)
        keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        if self._eof_sent or not keep_open:
            if not keep_open and not self._eof_sent:
                self.close()
            else:
                self._finish(None)

    def set_extra(self, name: str, value: Any) -> None:
        """Add or replace one ``get_extra_info`` value."""
        self._extra[name] = value

    def send_capacity(self, buffered: int) -> None:
        """The relay acknowledged data; ``buffered`` bytes remain unacknowledged."""
        if self._write_paused and buffered <= self._low and self._protocol is not None:
            if self._ring_full(low=True):
                return  # the peer's checkpoint will resume writing
            self._write_paused = False
            self._protocol.resume_writing()

    def lost(self, exc: Exception) -> None:
        """The stream or the whole session failed; the protocol sees ``exc``."""
        if self._finished:
            return
        self._closing = True
        self._finish(exc)

    # -- resume (called by the session and the agent) --------------------

    @property
    def can_resume(self) -> bool:
        """True if a lost relay leg would be resumed rather than end the stream."""
        state = self.state
        return (
            state is not None
            and self.established
            and not self._finished
            and state.phase is not ResumePhase.CLOSED
            and state.resumable
        )

    def detach(self, now: float, reason: str) -> bool:
        """The relay leg is gone; returns True if the stream now waits to resume.

        Otherwise (not resumable: never established, ring overrun, no
        stream id) the stream ends with :class:`StreamLost`.
        """
        if self._finished:
            return False
        if not self.can_resume:
            self.lost(StreamLost(reason) if self.established else ConnectionResetError(reason))
            return False
        assert self.state is not None
        session, self._session = self._session, None
        if session is not None:
            session.stream_detached(self.qid, self)
        already = self.state.phase is ResumePhase.DETACHED
        self.state.detach(now)
        if not already and self.on_detached is not None:
            self.on_detached(self)
        return True

    def attach(self, session: Session, qid: int) -> None:
        """A resume stream was opened for us on ``session`` (STREAM_RESUME sent)."""
        self._session = session
        self.qid = qid
        self.set_extra("peername", session.link.addr)

    def resumed(self, partner_sent: int, partner_recv: int, now: float) -> None:
        """The relay's echo arrived: re-send the gap, then the stream is live again.

        A gap that left the ring, or impossible positions, end the stream
        with :class:`StreamLost` and reset the resume stream (the relay
        passes the reset to the partner).
        """
        state, session = self.state, self._session
        if state is None or session is None or self._finished:
            return
        try:
            gap = state.resumed(partner_sent, partner_recv, now)
        except ResumeError as exc:
            session.abort_stream(self.qid)
            self.lost(StreamLost(str(exc)))
            return
        if gap:
            session.send(self.qid, gap)
        if self.on_resumed is not None:
            self.on_resumed(self)
        if self._eof_sent:
            session.send(self.qid, b"", end_stream=True)
        if self._close_pending or (self._eof_sent and self._eof_received):
            if not self._eof_received:
                session.stop_reading(self.qid)
            self._finish(None)
            return
        self.send_capacity(self._buffered())
        if not self._read_paused:
            session.grant_all(self.qid)

    def give_up(self, reason: str) -> None:
        """Stop waiting to resume: the application sees :class:`StreamLost`."""
        if self._finished:
            return
        if self._session is not None:
            self._session.abort_stream(self.qid)
        self.lost(StreamLost(reason))

    def peer_checkpoint(self, peer_ack: int) -> None:
        """The peer's STREAM_CHECKPOINT: free the ring below ``peer_ack``."""
        if self.state is not None:
            self.state.on_peer_checkpoint(peer_ack)
            if (
                self._write_paused
                and self._protocol is not None
                and self.live
                and not self._ring_full(low=True)
                and self._buffered() <= self._low
            ):
                self._write_paused = False
                self._protocol.resume_writing()

    # -- internals --------------------------------------------------------

    def _flush_head(self) -> None:
        head, self._head = self._head, None
        if head is not None and self._session is not None and not self._finished:
            self._session.send(self.qid, head)

    def _buffered(self) -> int:
        if self._finished:
            return 0
        if self.live:
            assert self._session is not None
            return self._session.send_buffered(self.qid)
        # Lost or resuming: what will be re-sent is what the peer has not acknowledged.
        return self.state.ring_len if self.state is not None else 0

    def _ring_full(self, *, low: bool = False) -> bool:
        """The ring of unacknowledged bytes is filling up (``low``: still above the resume mark).

        A fast transport (TCP) moves more bytes between two of the peer's
        checkpoints (100 ms) than the ring may hold; writing on would overrun
        it and the stream could no longer resume. So the writer pauses at 3/4
        of ``ring_max`` and resumes below 1/2, when checkpoints free the ring.
        """
        state = self.state
        if state is None:
            return False
        mark = state.ring_max // 2 if low else state.ring_max * 3 // 4
        return state.ring_len > mark

    def _check_pause(self) -> None:
        if self._write_paused or self._protocol is None:
            return
        if self._buffered() > self._high or self._ring_full():
            self._write_paused = True
            self._protocol.pause_writing()

    def _finish(self, exc: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        self.error = exc
        self._head = None
        if self.state is not None and self.state.phase is not ResumePhase.CLOSED:
            self.state.fail()
        session, self._session = self._session, None
        if session is not None:
            session.stream_finished(self.qid, self)
        if self.on_finished is not None:
            self.on_finished(self)
        protocol = self._protocol
        if protocol is not None:
            if self._write_paused:
                self._write_paused = False
                protocol.resume_writing()
            asyncio.get_running_loop().call_soon(protocol.connection_lost, exc)


def open_stream_pair(
    transport: RelayStreamTransport, *, limit: int = READER_LIMIT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Attach a StreamReader/StreamWriter pair to ``transport``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
