"""yamux v0 session, sans-IO, pure Python (the twin of ``outrelay._fast._yamux``).

How this works
--------------
:class:`YamuxSession` is driven like the QUIC core (``transport/connection.py``):
bytes read from TLS go into :meth:`receive_data`, bytes for TLS come out of
:meth:`data_to_send` (one join per call), and what happened comes out of
:meth:`next_event` as the transport's events (``transport/events.py``). Poll
``next_event()`` until ``None`` after *every* call into the session, not only
after ``receive_data``: ``send``, ``reset_stream`` and friends queue events
too (never re-entrantly: nothing is called back).

* **Opening.** ``open_stream`` returns the next id (client odd from 1, server
  even from 2) and sends nothing yet: the SYN rides on the stream's first
  frame (Data, WindowUpdate, FIN). If no frame went out by the next
  ``data_to_send``, that call sends a WindowUpdate carrying the SYN (delta 0,
  or the window above 256 KiB we offer). A peer's stream is accepted the same
  way: its ACK rides on our first frame on it, at the latest on the next
  ``data_to_send`` (the Go implementation closes a session whose SYNs stay
  unacknowledged, so the ACK is never held back longer).
* **Sending.** ``send`` frames at once what fits in the peer's window, in Data
  frames of at most ``MAX_DATA_FRAME`` bytes; the rest waits in the stream's
  queue (``send_buffered``) until a peer WindowUpdate opens the window. Every
  byte that leaves the queue is reported once in a
  :class:`SendCapacityAvailable` (``drained``; ``buffered`` = what is still
  queued), whether it went out at once or after a WindowUpdate, so a relay
  that grants its source leg on ``drained`` never loses credit. Reports are
  coalesced per stream and queued when the event queue runs empty.
* **Receiving.** Data is handed over as it arrives (a frame cut across reads
  is delivered piece by piece; its FIN comes with the last piece). The peer
  may send ``window`` bytes beyond what :meth:`grant` returned; a WindowUpdate
  goes out once half a window of granted credit is pending. More data than
  the window is a protocol error.
* **Ending.** FIN per direction (half-close). yamux's RST ends both
  directions, so our ``reset_stream`` / ``stop_stream`` (yamux has no
  STOP_SENDING) send RST and report the receive side as ended with a
  :class:`StreamReset`; a peer's RST is reported as :class:`StreamReset` and,
  if we were still sending, :class:`StopSendingReceived`. A stream whose two
  directions are over leaves no state behind.
* **Closing.** A GoAway from the peer, a protocol error (we send GoAway 1),
  :meth:`close` or :meth:`connection_lost` end the session with exactly one
  :class:`ConnectionClosed`. Unlike the Go implementation, a peer's GoAway
  ends open streams too (the reference's peers close the TCP connection right
  after it anyway).
"""

from __future__ import annotations

import struct
from collections import deque

from outrelay.mux.constants import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GOAWAY_INTERNAL_ERROR,
    GOAWAY_NORMAL,
    GOAWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_DATA_FRAME,
    MAX_TYPE,
    MAX_U32,
    PEER_MAX_STREAMS,
    RESET_CODE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    VERSION,
)
from outrelay.mux.errors import (
    ConnectionClosedError,
    DuplicateStream,
    InvalidStreamId,
    InvalidType,
    InvalidVersion,
    ProtocolError,
    ShortHeader,
    StreamClosedByPeer,
    StreamClosedError,
    StreamsExhausted,
    WindowExceeded,
)
from outrelay.transport.events import (
    ConnectionClosed,
    Event,
    SendCapacityAvailable,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

_HEADER = struct.Struct(">BBHII")
_pack = _HEADER.pack
_unpack_from = _HEADER.unpack_from

_GOAWAY_NAMES = {
    GOAWAY_NORMAL: "normal",
    GOAWAY_PROTOCOL_ERROR: "protocol error",
    GOAWAY_INTERNAL_ERROR: "internal error",
}


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 12-byte header of one frame.

    Raises:
        ValueError: a field is out of range (type 0..3, flags 16 bits, stream
            id and length 32 bits).
    """
    if not 0 <= frame_type <= MAX_TYPE:
        raise ValueError(f"yamux: frame type out of range: {frame_type}")
    if not 0 <= flags <= 0xFFFF:
        raise ValueError(f"yamux: flags out of range: {flags}")
    if not 0 <= stream_id <= MAX_U32:
        raise ValueError(f"yamux: stream id out of range: {stream_id}")
    if not 0 <= length <= MAX_U32:
        raise ValueError(f"yamux: length out of range: {length}")
    return _pack(VERSION, frame_type, flags, stream_id, length)


def decode_header(data: bytes, offset: int = 0) -> tuple[int, int, int, int]:
    """``(type, flags, stream_id, length)`` of the header at ``offset``.

    Raises:
        ShortHeader: fewer than 12 bytes from ``offset``.
        InvalidVersion: the version byte is not 0.
        InvalidType: the type byte is above 3.
    """
    if offset < 0 or len(data) - offset < HEADER_SIZE:
        raise ShortHeader(f"yamux: header needs {HEADER_SIZE} bytes")
    version, frame_type, flags, stream_id, length = _unpack_from(data, offset)
    if version != VERSION:
        raise InvalidVersion(f"yamux: unsupported version {version}")
    if frame_type > MAX_TYPE:
        raise InvalidType(f"yamux: unknown frame type {frame_type}")
    return frame_type, flags, stream_id, length


class _Stream:
    """State of one stream; dropped once both directions are over."""

    __slots__ = (
        "send_window",
        "queue",
        "queued",
        "fin_queued",
        "send_done",
        "hello",
        "extra",
        "recv_window",
        "unconsumed",
        "pending",
        "recv_done",
        "released",
        "ours",
    )

    def __init__(self, hello: int, extra: int, ours: bool) -> None:
        self.send_window = INITIAL_WINDOW  # bytes the peer lets us send
        self.queue: deque[memoryview] | None = None  # over-window data (made when needed)
        self.queued = 0  # bytes in queue
        self.fin_queued = False  # FIN asked for (sent once the queue is empty)
        self.send_done = False  # FIN framed or RST: nothing more goes out
        self.hello = hello  # SYN or ACK still to put on our first frame (0: done)
        self.extra = extra  # receive window above 256 KiB still to announce
        self.recv_window = INITIAL_WINDOW  # bytes the peer may still send
        self.unconsumed = 0  # delivered, not yet granted back
        self.pending = 0  # granted, not yet announced in a WindowUpdate
        self.recv_done = False  # FIN or RST seen: nothing more arrives
        self.released = False  # the application reads no more
        self.ours = ours  # we opened it


class YamuxSession:
    """One yamux session over a reliable byte stream (TLS over TCP).

    ``client`` picks the stream-id parity (odd for the dialer). ``window`` is
    the receive window we offer each stream (at least 256 KiB, the yamux
    initial window; more is announced on the stream's first frame).
    ``max_streams`` bounds the streams the peer may have open at once; a SYN
    beyond it is answered with RST.

    Raises:
        ValueError: ``window`` below 256 KiB or above 2**32-1, ``max_streams`` < 1.
    """

    def __init__(
        self,
        *,
        client: bool,
        window: int = INITIAL_WINDOW,
        max_streams: int = 1024,
    ) -> None:
        if not INITIAL_WINDOW <= window <= MAX_U32:
            raise ValueError(f"yamux: window must be {INITIAL_WINDOW}..{MAX_U32}, not {window}")
        if max_streams < 1:
            raise ValueError(f"yamux: max_streams must be >= 1, not {max_streams}")
        self.client = client
        self.window = window
        self.max_streams = max_streams
        #: Concurrent streams we assume the peer accepts (no yamux frame says).
        self.peer_max_streams = PEER_MAX_STREAMS
        #: Code reported in StreamReset / StopSendingReceived for a peer's RST.
        self.reset_code = RESET_CODE
        #: Value of the last Ping the peer answered (``None``: none yet).
        self.pong: int | None = None
        self._half = window // 2
        self._extra = window - INITIAL_WINDOW
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if client else 2
        self._peer_parity = 0 if client else 1
        self._peer_max = -1 if self._peer_parity else 0  # highest peer id seen
        self._gaps: set[int] = set()  # peer ids skipped by a later SYN, may still come
        self._ours = 0  # open streams we opened
        self._theirs = 0  # open streams the peer opened
        self._hello: list[int] = []  # stream ids that may still owe a SYN/ACK
        self._out: list[bytes | memoryview] = []
        self._events: deque[Event] = deque()
        self._drained: dict[int, int] = {}  # stream id -> bytes framed, not yet reported
        self._closed = False
        # receive parser: a cut header, and the rest of a Data payload
        self._partial = b""
        self._left = 0  # payload bytes of the current Data frame still to come
        self._rx_id = 0
        self._rx: _Stream | None = None  # None: discard the payload
        self._rx_fin = False

    # -- sans-IO driving --------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the byte stream (any cut, in order)."""
        if self._closed or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        if self._partial:
            data = self._partial + data
            self._partial = b""
        n = len(data)
        pos = 0
        streams = self._streams
        events = self._events
        try:
            if self._left:
                pos = self._payload(data, 0, n)
            while pos < n:
                if n - pos < HEADER_SIZE:
                    self._partial = data[pos:]
                    return
                version, kind, flags, sid, length = _unpack_from(data, pos)
                pos += HEADER_SIZE
                if version != VERSION:
                    raise InvalidVersion(f"yamux: unsupported version {version}")
                if kind == TYPE_DATA:
                    s = streams.get(sid)
                    end = pos + length
                    if (
                        s is not None
                        and not flags
                        and end <= n
                        and 0 < length <= s.recv_window
                        and not s.recv_done
                        and not s.released
                    ):
                        # the hot path: a whole plain Data frame on an open stream
                        s.recv_window -= length
                        s.unconsumed += length
                        events.append(StreamDataReceived(sid, data[pos:end], False))
                        pos = end
                        continue
                    if s is None or flags & FLAG_SYN:
                        s = self._unknown(sid, flags)
                    if s is not None and flags & FLAG_RST:
                        self._peer_reset(sid, s)
                        s = None
                    if s is not None:
                        if length:
                            if s.recv_done:
                                raise StreamClosedByPeer(f"yamux: data on stream {sid} after FIN")
                            if length > s.recv_window:
                                raise WindowExceeded(
                                    f"yamux: stream {sid}: {length} bytes over a window"
                                    f" of {s.recv_window}"
                                )
                            s.recv_window -= length
                        elif flags & FLAG_FIN:
                            if s.recv_done:
                                raise StreamClosedByPeer(f"yamux: second FIN on stream {sid}")
                            self._peer_fin(sid, s, b"")
                    if length:
                        self._left = length
                        self._rx_id = sid
                        self._rx = s
                        self._rx_fin = bool(flags & FLAG_FIN)
                        if pos < n:
                            pos = self._payload(data, pos, n)
                elif kind == TYPE_WINDOW_UPDATE:
                    s = streams.get(sid)
                    if s is None or flags & FLAG_SYN:
                        s = self._unknown(sid, flags)
                    if s is None:
                        continue
                    if flags & FLAG_RST:
                        self._peer_reset(sid, s)
                        continue
                    if length:
                        window = s.send_window + length
                        if window > MAX_U32:
                            raise WindowExceeded(f"yamux: stream {sid}: send window over 2**32-1")
                        s.send_window = window
                        if s.queue or s.fin_queued and not s.send_done:
                            self._push(sid, s)
                    if flags & FLAG_FIN:
                        if s.recv_done:
                            raise StreamClosedByPeer(f"yamux: second FIN on stream {sid}")
                        self._peer_fin(sid, s, b"")
                elif kind == TYPE_PING:
                    if sid != 0:
                        raise InvalidStreamId(f"yamux: Ping on stream {sid}")
                    if flags & FLAG_SYN:
                        self._out.append(_pack(VERSION, TYPE_PING, FLAG_ACK, 0, length))
                    elif flags & FLAG_ACK:
                        self.pong = length
                elif kind == TYPE_GO_AWAY:
                    if sid != 0:
                        raise InvalidStreamId(f"yamux: GoAway on stream {sid}")
                    name = _GOAWAY_NAMES.get(length, f"code {length}")
                    self._finish(length, f"peer sent GoAway ({name})", False)
                    return
                else:
                    raise InvalidType(f"yamux: unknown frame type {kind}")
        except ProtocolError as exc:
            self._fail(exc)

    def data_to_send(self) -> bytes:
        """Everything pending for the byte stream (``b""`` if nothing)."""
        if self._hello:
            self._flush_hello()
        out = self._out
        if not out:
            return b""
        if len(out) == 1:
            data = bytes(out[0])
        else:
            data = b"".join(out)
        out.clear()
        return data

    def next_event(self) -> Event | None:
        """The next event, or ``None``."""
        events = self._events
        if not events:
            if not self._drained:
                return None
            self._report()
        return events.popleft()

    def connection_lost(self, reason: str = "connection lost") -> None:
        """The byte stream ended (EOF or error): the session is over."""
        self._finish(GOAWAY_NORMAL, reason, False)

    # -- application API --------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :class:`ConnectionClosed` was queued."""
        return self._closed

    @property
    def stream_count(self) -> int:
        """Streams with state here (either direction not over yet)."""
        return len(self._streams)

    def open_stream(self) -> int:
        """Open a stream and return its id; the SYN rides on its first frame.

        Raises:
            ConnectionClosedError: the session is closed.
            StreamsExhausted: no stream id is left on our side.
        """
        if self._closed:
            raise ConnectionClosedError("connection is closed")
        sid = self._next_id
        if sid > MAX_U32:
            raise StreamsExhausted("yamux: stream ids exhausted")
        self._next_id = sid + 2
        self._streams[sid] = _Stream(FLAG_SYN, self._extra, True)
        self._ours += 1
        self._hello.append(sid)
        return sid

    def streams_available(self) -> int:
        """Streams :meth:`open_stream` can open within what the peer is assumed to accept."""
        if self._closed:
            return 0
        ids_left = (MAX_U32 - self._next_id) // 2 + 1 if self._next_id <= MAX_U32 else 0
        return max(0, min(self.peer_max_streams - self._ours, ids_left))

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` (and FIN if ``end_stream``); never blocks, never refuses.

        What fits in the peer's window is framed at once, the rest waits for a
        WindowUpdate (:meth:`send_buffered`, :class:`SendCapacityAvailable`).

        Raises:
            ConnectionClosedError: the session is closed.
            StreamClosedError: unknown stream, or our side was reset or finished.
        """
        if self._closed:
            raise ConnectionClosedError("connection is closed")
        s = self._streams.get(stream_id)
        if s is None or s.fin_queued or s.send_done:
            raise StreamClosedError(f"stream {stream_id}: sending side is closed")
        if type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        if not s.queue and n <= s.send_window and n <= MAX_DATA_FRAME:
            if n:
                flags = self._greet(stream_id, s) if s.hello else 0
                if end_stream:
                    flags |= FLAG_FIN
                out = self._out
                out.append(_pack(VERSION, TYPE_DATA, flags, stream_id, n))
                out.append(data)
                s.send_window -= n
                drained = self._drained
                drained[stream_id] = drained.get(stream_id, 0) + n
            elif end_stream:
                flags = self._greet(stream_id, s) if s.hello else 0
                self._out.append(
                    _pack(VERSION, TYPE_WINDOW_UPDATE, flags | FLAG_FIN, stream_id, 0)
                )
            else:
                return
            if end_stream:
                s.fin_queued = True
                s.send_done = True
                if s.recv_done:
                    self._forget(stream_id, s)
            return
        if n:
            if s.queue is None:
                s.queue = deque()
            s.queue.append(memoryview(data))
            s.queued += n
        if end_stream:
            s.fin_queued = True
        self._push(stream_id, s)

    def send_buffered(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` beyond the peer's window, not yet framed."""
        s = self._streams.get(stream_id)
        return 0 if s is None else s.queued

    def grant(self, stream_id: int, n: int) -> int:
        """Report ``n`` bytes of ``stream_id`` consumed; the peer may send that much more.

        Clamped to what was delivered and not yet granted; returns the bytes
        granted. The WindowUpdate goes out once half a window is pending.
        """
        s = self._streams.get(stream_id)
        if s is None or s.released or n <= 0:
            return 0
        if n > s.unconsumed:
            n = s.unconsumed
            if n <= 0:
                return 0
        s.unconsumed -= n
        pending = s.pending + n
        if pending >= self._half and not s.recv_done:
            self._window_update(stream_id, s, pending)
        else:
            s.pending = pending
        return n

    def unconsumed(self, stream_id: int) -> int:
        """Bytes delivered on ``stream_id`` and not yet granted back."""
        s = self._streams.get(stream_id)
        return 0 if s is None or s.released else s.unconsumed

    def release(self, stream_id: int) -> None:
        """Stop reading ``stream_id``: its data is dropped and credited back, now and later."""
        s = self._streams.get(stream_id)
        if s is None or s.released:
            return
        s.released = True
        pending = s.pending + s.unconsumed
        s.unconsumed = 0
        if pending >= self._half and not s.recv_done and not self._closed:
            self._window_update(stream_id, s, pending)
        else:
            s.pending = pending

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abort the stream with RST (yamux: both directions; no code on the wire).

        Queued data is dropped. If the receive side was still open, a
        :class:`StreamReset` with ``error_code`` reports its end.
        """
        if self._closed:
            return
        s = self._streams.get(stream_id)
        if s is None:
            return
        if s.hello != FLAG_SYN:  # a stream never announced needs no RST
            self._out.append(
                _pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST | s.hello, stream_id, 0)
            )
        s.hello = 0
        self._drained.pop(stream_id, None)
        if not s.recv_done:
            self._events.append(StreamReset(stream_id, error_code))
        self._forget(stream_id, s)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """Stop reading and abort: yamux has no STOP_SENDING, so this is :meth:`reset_stream`."""
        self.reset_stream(stream_id, error_code)

    def close(self, code: int = 0, reason: str = "") -> None:
        """Send GoAway and end the session (one :class:`ConnectionClosed`).

        ``code`` 0, 1 or 2 goes on the wire as is; any other code as 2
        (internal error). The event carries ``code`` and ``reason``.
        """
        if self._closed:
            return
        wire = code if 0 <= code <= GOAWAY_INTERNAL_ERROR else GOAWAY_INTERNAL_ERROR
        self._out.append(_pack(VERSION, TYPE_GO_AWAY, 0, 0, wire))
        self._finish(code, reason, True)

    def ping(self, value: int) -> None:
        """Send a Ping; the peer's answer sets :attr:`pong` to ``value``.

        Raises:
            ConnectionClosedError: the session is closed.
            ValueError: ``value`` is not a u32.
        """
        if self._closed:
            raise ConnectionClosedError("connection is closed")
        if not 0 <= value <= MAX_U32:
            raise ValueError(f"yamux: ping value out of range: {value}")
        self._out.append(_pack(VERSION, TYPE_PING, FLAG_SYN, 0, value))

    # -- internals --------------------------------------------------------

    def _payload(self, data: bytes, pos: int, n: int) -> int:
        """Consume the current Data payload from ``data[pos:n]``; return the new pos."""
        left = self._left
        take = n - pos
        if take > left:
            take = left
        left -= take
        self._left = left
        s = self._rx
        if s is None or s.recv_done:  # discarded, or reset while the frame arrived
            return pos + take
        sid = self._rx_id
        fin = self._rx_fin and not left
        if s.released:
            s.pending += take
            if fin:
                s.recv_done = True
                if s.send_done:
                    self._forget(sid, s)
            elif s.pending >= self._half and not s.recv_done:
                self._window_update(sid, s, s.pending)
            return pos + take
        chunk = data if take == n and not pos else data[pos : pos + take]
        s.unconsumed += take
        if fin:
            self._peer_fin(sid, s, chunk)
        else:
            self._events.append(StreamDataReceived(sid, chunk, False))
        return pos + take

    def _unknown(self, sid: int, flags: int) -> _Stream | None:
        """A frame with SYN, or for a stream not in the table: the stream, or
        ``None`` to ignore the frame (a stream that ended, or refused)."""
        if sid == 0:
            raise InvalidStreamId("yamux: stream frame on stream 0")
        peer_id = (sid & 1) == self._peer_parity
        if not flags & FLAG_SYN:
            if peer_id:
                if sid <= self._peer_max and sid not in self._gaps:
                    return None  # a stream that ended: late frames are dropped
            elif sid < self._next_id:
                return None
            raise InvalidStreamId(f"yamux: frame for stream {sid}, never opened")
        if not peer_id:
            raise InvalidStreamId(f"yamux: SYN with our parity on stream {sid}")
        if sid in self._streams:
            raise DuplicateStream(f"yamux: SYN for open stream {sid}")
        top = self._peer_max
        if sid > top:
            skipped = (sid - top) // 2 - 1
            if skipped:
                if len(self._gaps) + skipped > self.max_streams:
                    raise InvalidStreamId(f"yamux: SYN for stream {sid} skips too many ids")
                self._gaps.update(range(top + 2, sid, 2))
            self._peer_max = sid
        elif sid in self._gaps:
            self._gaps.discard(sid)
        else:
            raise DuplicateStream(f"yamux: SYN reuses stream id {sid}")
        if self._theirs >= self.max_streams:
            self._out.append(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
            return None
        s = self._streams[sid] = _Stream(FLAG_ACK, self._extra, False)
        self._theirs += 1
        self._hello.append(sid)
        return s

    def _greet(self, sid: int, s: _Stream) -> int:
        """Flags for our first frame on ``s`` (SYN or ACK); announces extra window first."""
        hello = s.hello
        s.hello = 0
        if s.extra:
            self._out.append(_pack(VERSION, TYPE_WINDOW_UPDATE, hello, sid, s.extra))
            s.recv_window += s.extra
            s.extra = 0
            return 0
        return hello

    def _flush_hello(self) -> None:
        streams = self._streams
        out = self._out
        for sid in self._hello:
            s = streams.get(sid)
            if s is not None and s.hello:
                out.append(_pack(VERSION, TYPE_WINDOW_UPDATE, s.hello, sid, s.extra))
                s.recv_window += s.extra
                s.extra = 0
                s.hello = 0
        self._hello.clear()

    def _window_update(self, sid: int, s: _Stream, delta: int) -> None:
        flags = self._greet(sid, s) if s.hello else 0
        self._out.append(_pack(VERSION, TYPE_WINDOW_UPDATE, flags, sid, delta))
        s.recv_window += delta
        s.pending = 0

    def _push(self, sid: int, s: _Stream) -> None:
        """Frame queued data within the send window; FIN once the queue is empty."""
        out = self._out
        q = s.queue
        window = s.send_window
        sent = 0
        while q and window > 0:
            head = q[0]
            size = len(head)
            take = window if window < MAX_DATA_FRAME else MAX_DATA_FRAME
            if size <= take:
                take = size
                q.popleft()
                part = head
            else:
                part = head[:take]
                q[0] = head[take:]
            flags = self._greet(sid, s) if s.hello else 0
            if not q and s.fin_queued:
                flags |= FLAG_FIN
                s.send_done = True
            out.append(_pack(VERSION, TYPE_DATA, flags, sid, take))
            out.append(part)
            window -= take
            sent += take
        s.send_window = window
        if sent:
            s.queued -= sent
            drained = self._drained
            drained[sid] = drained.get(sid, 0) + sent
        if s.fin_queued and not q and not s.send_done:
            flags = self._greet(sid, s) if s.hello else 0
            out.append(_pack(VERSION, TYPE_WINDOW_UPDATE, flags | FLAG_FIN, sid, 0))
            s.send_done = True
        if s.send_done and s.recv_done:
            self._forget(sid, s)

    def _peer_fin(self, sid: int, s: _Stream, chunk: bytes) -> None:
        s.recv_done = True
        if not s.released:
            self._events.append(StreamDataReceived(sid, chunk, True))
        if s.send_done:
            self._forget(sid, s)

    def _peer_reset(self, sid: int, s: _Stream) -> None:
        code = self.reset_code
        if not s.recv_done:
            self._events.append(StreamReset(sid, code))
        if not s.send_done:
            self._events.append(StopSendingReceived(sid, code))
        self._drained.pop(sid, None)
        self._forget(sid, s)

    def _forget(self, sid: int, s: _Stream) -> None:
        s.recv_done = s.send_done = True
        s.queue = None
        s.queued = 0
        if self._streams.pop(sid, None) is not None:
            if s.ours:
                self._ours -= 1
            else:
                self._theirs -= 1

    def _report(self) -> None:
        streams = self._streams
        events = self._events
        for sid, n in self._drained.items():
            s = streams.get(sid)
            events.append(SendCapacityAvailable(sid, n, 0 if s is None else s.queued))
        self._drained.clear()

    def _fail(self, exc: ProtocolError) -> None:
        if self._closed:
            return
        code = exc.goaway_code
        self._out.append(_pack(VERSION, TYPE_GO_AWAY, 0, 0, code))
        self._finish(code, str(exc), True)

    def _finish(self, code: int, reason: str, by_us: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._streams.clear()
        self._drained.clear()
        self._hello.clear()
        self._gaps.clear()
        self._ours = self._theirs = 0
        self._partial = b""
        self._left = 0
        self._rx = None
        self._events.append(ConnectionClosed(error_code=code, reason=reason, by_us=by_us))


__all__ = ["YamuxSession", "decode_header", "encode_header"]
