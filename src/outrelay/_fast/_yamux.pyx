# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
"""yamux v0 session, compiled twin of ``outrelay.mux._session_py``.

Same API, same events, same bytes out, same exceptions and messages; see
the pure twin for the protocol rules. Why it is fast: headers are read and
written with C integer ops on raw buffer pointers; a Data frame's payload is
cut straight out of the fed buffer into its ``bytes`` (one copy; a frame
split across feeds is filled in place into a ``bytes`` of its declared
length, bounded by the receive window); per-stream state is a cdef class
with C integers; ``data_to_send`` sizes its output first and writes every
header and payload into one ``bytes`` (one copy of each payload).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.stdint cimport int64_t, uint32_t
from libc.string cimport memcpy

__all__ = ["YamuxSession", "decode_header", "encode_header"]

cdef enum:
    _HEADER_SIZE = 12
    _VERSION = 0
    _T_DATA = 0
    _T_WINDOW = 1
    _T_PING = 2
    _T_GOAWAY = 3
    _F_SYN = 1
    _F_ACK = 2
    _F_FIN = 4
    _F_RST = 8
    _GOAWAY_NORMAL = 0
    _GOAWAY_PROTOCOL = 1
    _GOAWAY_INTERNAL = 2

cdef int64_t _MAX_U32 = 0xFFFFFFFF


# -- C helpers ---------------------------------------------------------------

cdef inline long long _as_int(object o) except? -1:
    # operator.index semantics; a value too big for C comes back as -1, which
    # every caller treats as out of range.
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(o, &overflow)
    if overflow:
        return -1
    return v


cdef inline unsigned int _be16(const unsigned char* q) noexcept:
    return (<unsigned int>q[0] << 8) | q[1]


cdef inline uint32_t _be32(const unsigned char* q) noexcept:
    return ((<uint32_t>q[0] << 24) | (<uint32_t>q[1] << 16)
            | (<uint32_t>q[2] << 8) | <uint32_t>q[3])


cdef inline void _put32(unsigned char* q, uint32_t v) noexcept:
    q[0] = <unsigned char>(v >> 24)
    q[1] = <unsigned char>(v >> 16)
    q[2] = <unsigned char>(v >> 8)
    q[3] = <unsigned char>v


cdef inline void _write_header(unsigned char* q, unsigned int ftype, unsigned int flags,
                               uint32_t stream_id, uint32_t length) noexcept:
    q[0] = _VERSION
    q[1] = <unsigned char>ftype
    q[2] = <unsigned char>(flags >> 8)
    q[3] = <unsigned char>flags
    _put32(q + 4, stream_id)
    _put32(q + 8, length)


cdef inline void _append_header(bytearray out, unsigned int ftype, unsigned int flags,
                                uint32_t stream_id, uint32_t length):
    cdef unsigned char h[_HEADER_SIZE]
    _write_header(h, ftype, flags, stream_id, length)
    out.extend((<char*>h)[:_HEADER_SIZE])


# -- headers -----------------------------------------------------------------

def encode_header(ftype, flags, stream_id, length):
    """Return the 12-byte header of one frame (version 0).

    Raises ValueError (a field out of its range: type 0..255, flags
    0..0xFFFF, stream id and length 0..2**32-1), TypeError (not an integer).
    """
    cdef long long t = _as_int(ftype)
    cdef long long f = _as_int(flags)
    cdef long long s = _as_int(stream_id)
    cdef long long n = _as_int(length)
    if t < 0 or t > 0xFF:
        raise _bad_field("type", _index(ftype))
    if f < 0 or f > 0xFFFF:
        raise _bad_field("flags", _index(flags))
    if s < 0 or s > _MAX_U32:
        raise _bad_field("stream id", _index(stream_id))
    if n < 0 or n > _MAX_U32:
        raise _bad_field("length", _index(length))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEADER_SIZE)
    _write_header(<unsigned char*>PyBytes_AS_STRING(out), <unsigned int>t, <unsigned int>f,
                  <uint32_t>s, <uint32_t>n)
    return out


cdef inline tuple _decode(const unsigned char* q, Py_ssize_t n):
    if n < _HEADER_SIZE:
        raise _short_header(n)
    return (<int>q[0], <int>q[1], <int>_be16(q + 2), <long long>_be32(q + 4),
            <long long>_be32(q + 8))


def decode_header(buf):
    """Parse the first 12 bytes of ``buf`` into ``(version, type, flags, stream_id, length)``.

    Raises ShortHeader (fewer than 12 bytes), TypeError (not bytes-like).
    """
    cdef Py_buffer view
    if PyBytes_CheckExact(buf):
        return _decode(<const unsigned char*>PyBytes_AS_STRING(buf), PyBytes_GET_SIZE(buf))
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        return _decode(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


# -- per-stream state ----------------------------------------------------------

@cython.final
@cython.freelist(64)
cdef class _Stream:
    """One stream's windows and queue (internal)."""

    def __cinit__(self):
        self.queue = []


cdef inline _Stream _new_stream(uint32_t stream_id, int64_t window):
    cdef _Stream s = _Stream.__new__(_Stream)
    s.id = stream_id
    s.send_window = window
    s.recv_window = window
    return s


cdef inline bint _fin_due(_Stream s, int64_t take) noexcept:
    # FIN rides on the frame that carries the last queued byte (or alone).
    return (s.fin_queued and not s.fin_sent and not s.local_reset and not s.remote_reset
            and take == s.buffered)


# -- session -------------------------------------------------------------------

cdef class YamuxSession:
    """A sans-IO yamux v0 session; see ``outrelay.mux._session_py`` for the rules."""

    def __cinit__(self):
        self._streams = {}
        self._ready = []
        self._ctrl = bytearray()
        self._events = _deque()
        self._partial = None

    def __init__(self, *, client, window=256 * 1024, max_streams=1024):
        cdef long long w = _as_int(window)
        cdef long long m = _as_int(max_streams)
        if w < 1 or w > _MAX_U32:
            raise _bad_field("window", _index(window))
        if m < 0:
            raise _bad_field("max_streams", _index(max_streams))
        self._client = bool(client)
        self._next_id = 1 if self._client else 2
        self._window = w
        self._max_streams = <Py_ssize_t>m

    def __reduce_ex__(self, protocol):
        raise TypeError("cannot pickle or copy a YamuxSession")

    # -- properties --------------------------------------------------------

    @property
    def closed(self):
        """True once ConnectionClosed was emitted."""
        return self._closed

    # -- input -------------------------------------------------------------

    def receive_data(self, data):
        """Feed bytes read from the byte stream (TLS); events come out of next_event."""
        cdef Py_buffer view
        if self._closed:
            return None
        if PyBytes_CheckExact(data):
            self._feed(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            return None
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return None

    def next_event(self):
        """The next event, or None."""
        if self._events:
            return self._events.popleft()
        return None

    cdef int _feed(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take
        cdef uint32_t length
        cdef const unsigned char* q
        cdef object payload
        if self._hdr_len:
            # Complete the pending frame first.
            if self._hdr_len < _HEADER_SIZE:
                take = min(_HEADER_SIZE - self._hdr_len, n)
                memcpy(self._hdr + self._hdr_len, p, take)
                self._hdr_len += take
                pos = take
                if self._hdr_len < _HEADER_SIZE:
                    return 0
                if not self._check(self._hdr):
                    return 0
                self._start_partial()
            length = _be32(self._hdr + 8) if self._hdr[1] == _T_DATA else 0
            take = min(<Py_ssize_t>(length - self._plen), n - pos)
            if take:
                memcpy(PyBytes_AS_STRING(self._partial) + self._plen, p + pos, take)
                self._plen += take
                pos += take
            if self._plen < length:
                return 0
            payload = self._partial
            self._partial = None
            self._hdr_len = 0
            self._frame(self._hdr, NULL, payload)
            if self._closed:
                return 0
        while n - pos >= _HEADER_SIZE:
            q = p + pos
            if not self._check(q):
                return 0
            length = _be32(q + 8) if q[1] == _T_DATA else 0
            if <Py_ssize_t>length > n - pos - _HEADER_SIZE:
                break
            self._frame(q, q + _HEADER_SIZE, None)
            if self._closed:
                return 0
            pos += _HEADER_SIZE + length
        if pos < n:
            # The start of the next frame: keep it as the one partial frame.
            take = min(<Py_ssize_t>_HEADER_SIZE, n - pos)
            memcpy(self._hdr, p + pos, take)
            self._hdr_len = take
            pos += take
            if take == _HEADER_SIZE:
                # A Data frame cut inside its payload (already checked above).
                self._start_partial()
                take = n - pos
                memcpy(PyBytes_AS_STRING(self._partial), p + pos, take)
                self._plen = <uint32_t>take
        return 0

    cdef int _start_partial(self) except -1:
        # The payload of the pending Data frame, filled in place as it arrives;
        # its length was checked against the window, so memory stays bounded.
        self._plen = 0
        if self._hdr[1] == _T_DATA:
            self._partial = PyBytes_FromStringAndSize(NULL, _be32(self._hdr + 8))
        else:
            self._partial = None
        return 0

    cdef bint _check(self, const unsigned char* q) except -1:
        # Header checks that do not need the payload; False: the session closed.
        if q[0] != _VERSION:
            self._protocol_error(f"yamux: unsupported version {q[0]}")
            return False
        if q[1] > _T_GOAWAY:
            self._protocol_error(f"yamux: unknown frame type {q[1]}")
            return False
        if q[1] == _T_DATA and _be32(q + 8) > self._window:
            self._protocol_error(
                f"yamux: data frame of {_be32(q + 8)} bytes exceeds the window on stream "
                f"{_be32(q + 4)}"
            )
            return False
        return True

    cdef int _frame(self, const unsigned char* q, const unsigned char* payload,
                    object whole) except -1:
        # ``whole``: the payload as a complete bytes object (a frame that was
        # split across feeds), else ``payload`` points into the fed buffer.
        cdef unsigned int ftype = q[1]
        cdef unsigned int flags = _be16(q + 2)
        cdef uint32_t sid = _be32(q + 4)
        cdef uint32_t length = _be32(q + 8)
        if ftype == _T_PING:
            if flags & _F_SYN:
                _append_header(self._ctrl, _T_PING, _F_ACK, 0, length)
            return 0
        if ftype == _T_GOAWAY:
            self._goaway_recv = True
            self._finish(length, f"yamux: peer sent GoAway ({_goaway_label(length)})", False)
            return 0
        cdef _Stream s = self._streams.get(sid)
        if flags & _F_SYN:
            if s is not None:
                self._protocol_error(f"yamux: duplicate SYN for stream {sid}")
                return 0
            if sid == 0 or (sid & 1) == (1 if self._client else 0):
                self._protocol_error(f"yamux: peer opened stream {sid} with our parity")
                return 0
            if len(self._streams) >= self._max_streams or self._goaway_sent:
                _append_header(self._ctrl, _T_WINDOW, _F_RST, sid, 0)
                return 0
            s = _new_stream(sid, self._window)
            self._streams[sid] = s
            _append_header(self._ctrl, _T_WINDOW, _F_ACK, sid, 0)
        elif s is None:
            return 0  # a stream we already forgot (reset or finished): drop it
        if ftype == _T_WINDOW:
            if length:
                self._window_update(s, length)
        elif length:
            if length > s.recv_window:
                self._protocol_error(
                    f"yamux: stream {sid} sent {length} bytes over a window of {s.recv_window}"
                )
                return 0
            s.recv_window -= length
            if s.released:
                s.to_update += length
                self._maybe_update(s)
            else:
                s.unconsumed += length
            if not s.fin_recv and not s.remote_reset:
                if whole is None:
                    whole = PyBytes_FromStringAndSize(<const char*>payload, length)
                self._events.append(StreamDataReceived(sid, whole, bool(flags & _F_FIN)))
        elif flags & _F_FIN and not s.fin_recv and not s.remote_reset:
            self._events.append(StreamDataReceived(sid, b"", True))
        if flags & _F_FIN:
            s.fin_recv = True
        if flags & _F_RST:
            if not s.remote_reset:
                s.remote_reset = True
                self._drop_queue(s)
                self._events.append(StreamReset(sid, 0))
        self._forget_if_done(s)
        return 0

    cdef int _window_update(self, _Stream s, uint32_t delta) except -1:
        cdef int64_t before = self._over_window(s)
        s.send_window += delta
        cdef int64_t after = self._over_window(s)
        if s.buffered > 0 and not s.in_ready and not s.local_reset:
            s.in_ready = True
            self._ready.append(s)
        if after < before:
            self._events.append(SendCapacityAvailable(s.id, before - after, after))
        return 0

    cdef int64_t _over_window(self, _Stream s) noexcept:
        cdef int64_t over = s.buffered - s.send_window
        return over if over > 0 else 0

    # -- application API -----------------------------------------------------

    def open_stream(self):
        """Open a stream (SYN) and return its id: client odd 1, 3, ...; server even.

        Raises ConnectionClosedError (the session is closing or closed),
        StreamLimitError (max_streams reached, or the id space is used up).
        """
        self._check_open()
        if len(self._streams) >= self._max_streams or self._next_id > _MAX_U32 - 1:
            raise _too_many(self._max_streams)
        cdef uint32_t sid = self._next_id
        self._next_id += 2
        self._streams[sid] = _new_stream(sid, self._window)
        _append_header(self._ctrl, _T_WINDOW, _F_SYN, sid, 0)
        return sid

    def streams_available(self):
        """Streams open_stream can still open (0 once closed)."""
        if self._closed or self._goaway_recv:
            return 0
        cdef Py_ssize_t left = self._max_streams - len(self._streams)
        return left if left > 0 else 0

    def send(self, stream_id, data, end_stream=False):
        """Queue data (and optionally FIN); it goes out within the peer's window.

        Raises ConnectionClosedError, StreamClosedError (unknown stream, our side
        reset or finished, or the peer reset it).
        """
        self._check_open()
        cdef _Stream s = self._stream_for_send(stream_id)
        if not PyBytes_CheckExact(data):
            data = bytes(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if n:
            s.queue.append(data)
            s.buffered += n
        if end_stream:
            s.fin_queued = True
        if (n or end_stream) and not s.in_ready:
            s.in_ready = True
            self._ready.append(s)

    def send_buffered(self, stream_id):
        """Bytes queued on the stream beyond the peer's window (not yet sendable)."""
        cdef _Stream s = self._streams.get(stream_id)
        if s is None:
            return 0
        return self._over_window(s)

    def grant(self, stream_id, n):
        """The application consumed ``n`` bytes: return them to the peer's window.

        Clamped to what was delivered and not granted; returns the bytes
        granted. The WindowUpdate goes out once half a window has built up.
        """
        cdef _Stream s = self._streams.get(stream_id)
        cdef long long k = _as_int(n)
        if s is None or s.released or k <= 0:
            return 0
        if k > s.unconsumed:
            k = s.unconsumed
        if k > 0:
            s.unconsumed -= k
            s.to_update += k
            self._maybe_update(s)
            self._forget_if_done(s)
        return k

    def release(self, stream_id):
        """Stop reading the stream: its window is returned to the peer, now and later."""
        cdef _Stream s = self._streams.get(stream_id)
        if s is None or s.released:
            return None
        s.released = True
        s.to_update += s.unconsumed
        s.unconsumed = 0
        self._maybe_update(s)
        self._forget_if_done(s)

    def reset_stream(self, stream_id, error_code):
        """Abort the stream (RST: yamux resets both directions); queued data is dropped."""
        if self._closed:
            return None
        cdef _Stream s = self._streams.get(stream_id)
        if s is None or s.local_reset:
            return None
        s.local_reset = True
        self._drop_queue(s)
        _append_header(self._ctrl, _T_WINDOW, _F_RST, s.id, 0)
        self._streams.pop(s.id, None)

    def stop_stream(self, stream_id, error_code):
        """Stop reading the stream; yamux has no STOP_SENDING, so it is reset (RST)."""
        self.reset_stream(stream_id, error_code)

    def close(self, code=0, reason=""):
        """Send GoAway and end the session (ConnectionClosed, by us)."""
        if self._closed:
            return None
        cdef long long c = _as_int(code)
        if c < 0 or c > _MAX_U32:
            c = _GOAWAY_INTERNAL
        _append_header(self._ctrl, _T_GOAWAY, 0, 0, <uint32_t>c)
        self._goaway_sent = True
        self._finish(c, reason, True)

    # -- output ----------------------------------------------------------------

    def data_to_send(self):
        """Everything pending for the byte stream as one bytes object (b"" if none)."""
        cdef Py_ssize_t total = PyByteArray_GET_SIZE(self._ctrl)
        cdef Py_ssize_t i, k
        cdef _Stream s
        cdef int64_t take
        cdef list ready = self._ready
        cdef Py_ssize_t nready = len(ready)
        if nready == 0:
            if total == 0:
                return b""
            out = bytes(self._ctrl)
            del self._ctrl[:]
            return out
        # Size first: one frame per ready stream.
        for i in range(nready):
            s = <_Stream>ready[i]
            take = self._sendable(s)
            if take or _fin_due(s, take):
                total += _HEADER_SIZE + take
        if total == 0:
            return b""
        cdef bytes out_b = PyBytes_FromStringAndSize(NULL, total)
        cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out_b)
        cdef Py_ssize_t ctrl_n = PyByteArray_GET_SIZE(self._ctrl)
        if ctrl_n:
            memcpy(dst, PyByteArray_AS_STRING(self._ctrl), ctrl_n)
            del self._ctrl[:]
        dst += ctrl_n
        cdef list keep = []
        cdef unsigned int flags
        for i in range(nready):
            s = <_Stream>ready[i]
            take = self._sendable(s)
            flags = 0
            if _fin_due(s, take):
                flags = _F_FIN
            elif not take:
                s.in_ready = False
                continue
            _write_header(dst, _T_DATA, flags, s.id, <uint32_t>take)
            dst += _HEADER_SIZE
            self._copy_out(s, dst, take)
            dst += take
            s.send_window -= take
            if flags:
                s.fin_sent = True
            if s.buffered and s.send_window > 0:
                keep.append(s)
            else:
                s.in_ready = False
            self._forget_if_done(s)
        self._ready = keep
        return out_b

    cdef int64_t _sendable(self, _Stream s) noexcept:
        if s.local_reset:
            return 0
        return s.buffered if s.buffered < s.send_window else s.send_window

    cdef int _copy_out(self, _Stream s, unsigned char* dst, int64_t take) except -1:
        cdef bytes chunk
        cdef Py_ssize_t avail, step
        cdef list queue = s.queue
        while take:
            chunk = <bytes>queue[s.q_head]
            avail = PyBytes_GET_SIZE(chunk) - s.q_off
            step = avail if avail < take else take
            memcpy(dst, PyBytes_AS_STRING(chunk) + s.q_off, step)
            dst += step
            take -= step
            s.buffered -= step
            if step == avail:
                queue[s.q_head] = None
                s.q_head += 1
                s.q_off = 0
            else:
                s.q_off += step
        if s.q_head == len(queue):
            del queue[:]
            s.q_head = 0
        elif s.q_head > 64:
            del queue[:s.q_head]
            s.q_head = 0
        return 0

    # -- internals -------------------------------------------------------------

    cdef int _check_open(self) except -1:
        if self._closed or self._goaway_sent:
            raise ConnectionClosedError("yamux: session is closed")
        return 0

    cdef _Stream _stream_for_send(self, object stream_id):
        cdef _Stream s = self._streams.get(stream_id)
        if s is None:
            raise StreamClosedError(f"stream {stream_id}: unknown or closed")
        if s.local_reset or s.remote_reset:
            raise StreamClosedError(f"stream {stream_id}: sending side was reset")
        if s.fin_queued:
            raise StreamClosedError(f"stream {stream_id}: sending side already finished")
        return s

    cdef int _maybe_update(self, _Stream s) except -1:
        if s.fin_recv or s.remote_reset or s.local_reset:
            s.to_update = 0
            return 0
        if s.to_update * 2 >= self._window:
            _append_header(self._ctrl, _T_WINDOW, 0, s.id, <uint32_t>s.to_update)
            s.recv_window += s.to_update
            s.to_update = 0
        return 0

    cdef int _drop_queue(self, _Stream s) except -1:
        del s.queue[:]
        s.q_head = 0
        s.q_off = 0
        s.buffered = 0
        return 0

    cdef int _forget_if_done(self, _Stream s) except -1:
        cdef bint tx_done = s.fin_sent or s.local_reset or s.remote_reset
        cdef bint rx_done = s.fin_recv or s.remote_reset or s.local_reset
        if tx_done and rx_done and (s.unconsumed == 0 or s.released):
            self._streams.pop(s.id, None)
        return 0

    cdef int _protocol_error(self, str reason) except -1:
        _append_header(self._ctrl, _T_GOAWAY, 0, 0, _GOAWAY_PROTOCOL)
        self._goaway_sent = True
        self._finish(_GOAWAY_PROTOCOL, reason, True)
        return 0

    cdef int _finish(self, long long code, str reason, bint by_us) except -1:
        self._closed = True
        self._hdr_len = 0
        self._partial = None
        for s in self._streams.values():
            self._drop_queue(<_Stream>s)
        self._ready = []
        self._events.append(ConnectionClosed(code, reason, by_us))
        return 0


# -- shared Python pieces ------------------------------------------------------
# Imported last on purpose, as in _codec.pyx: importing outrelay.mux runs its
# __init__, which picks this module.

from collections import deque as _deque  # noqa: E402
from operator import index as _index  # noqa: E402

from outrelay.transport.errors import ConnectionClosedError, StreamClosedError  # noqa: E402
from outrelay.transport.events import (  # noqa: E402
    ConnectionClosed,
    SendCapacityAvailable,
    StreamDataReceived,
    StreamReset,
)


def _bad_field(name, value):
    return ValueError(f"yamux: {name} {value} out of range")


def _short_header(n):
    return ValueError(f"yamux: short header: {n} bytes, need {_HEADER_SIZE}")


def _too_many(limit):
    return RuntimeError(f"yamux: no stream available (max_streams={limit})")


def _goaway_label(code):
    return {0: "normal", 1: "protocol error", 2: "internal error"}.get(code, f"code {code}")
