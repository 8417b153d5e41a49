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

Half-close: ``write_eof`` sends FIN; the peer's FIN feeds EOF to the reader.
The protocol's ``connection_lost`` runs once both sides finished, on
``close``/``abort``, or when the session dies.

``sent`` and ``received`` count application bytes; they are the positions a
resume ring and STREAM_CHECKPOINT will use. The session and QUIC stream id
are held in one place (``_session``, ``qid``) so that resume can swap them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

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
        #: Application bytes written (SentPos).
        self.sent = 0
        #: Application bytes handed to the protocol (RecvPos).
        self.received = 0

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
        if self._session is not None and not self._finished:
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
        session = self._session
        if session is None or self._finished:
            return 0
        return session.send_buffered(self.qid)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` on the stream.

        Raises RuntimeError after :meth:`write_eof`. Writes after ``close`` or
        after the stream was lost are dropped, as asyncio's socket transports do.
        """
        if self._eof_sent and not self._closing:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._closing or self._finished or self._session is None:
            return
        chunk = bytes(data)
        self._session.send(self.qid, chunk)
        self.sent += len(chunk)
        self._check_pause()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """Half-close: send FIN; reading goes on until the peer's FIN."""
        if self._eof_sent or self._closing or self._finished:
            return
        self._eof_sent = True
        if self._session is not None:
            self._session.send(self.qid, b"", end_stream=True)
        if self._eof_received:
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
        """Application bytes arrived; credit goes back unless the reader is paused."""
        if self._finished or self._protocol is None:
            return
        self.received += len(data)
        self._protocol.data_received(data)  # type: ignore[attr-defined]
        if not self._read_paused and self._session is not None and not self._finished:
            self._session.grant_all(self.qid)

    def feed_eof(self) -> None:
        """The peer finished its side (FIN)."""
        if self._eof_received or self._finished or self._protocol is None:
            return
        self._eof_received = True
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
            self._write_paused = False
            self._protocol.resume_writing()

    def lost(self, exc: Exception) -> None:
        """The stream or the whole session failed; the protocol sees ``exc``."""
        if self._finished:
            return
        self._closing = True
        self._finish(exc)

    # -- internals --------------------------------------------------------

    def _check_pause(self) -> None:
        if self._write_paused or self._protocol is None or self._session is None:
            return
        if self._session.send_buffered(self.qid) > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def _finish(self, exc: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        session, self._session = self._session, None
        if session is not None:
            session.stream_finished(self.qid, self)
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
