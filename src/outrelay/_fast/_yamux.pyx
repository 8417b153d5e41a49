# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
"""yamux v0 session, compiled twin of ``outrelay.mux._session_py``.

Same API, same events, same bytes out, same exceptions and messages: this
module follows the pure twin step for step (read that one for how the
protocol works); only the data structures differ. Why it is fast:

* headers are read and written with C integer ops on raw pointers, and the
  per-stream state is a cdef class of C integers;
* a Data payload is cut straight out of the fed buffer into the event's
  ``bytes`` (one copy; none when one feed is exactly one payload piece);
* outgoing headers go into one C buffer and payloads are kept by reference
  (object, offset, length) with the header position they follow, so
  ``data_to_send`` allocates one ``bytes`` and copies every payload once;
  nothing is copied or allocated per frame before that.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int64_t, uint32_t
from libc.string cimport memcpy

__all__ = ["YamuxSession", "decode_header", "encode_header"]

# The wire constants, as C values; checked against outrelay.mux.constants at
# import (the bottom of this module), so the twins cannot drift apart.
cdef enum:
    _HEADER_SIZE = 12
    _VERSION = 0
    _T_DATA = 0
    _T_WINDOW = 1
    _T_PING = 2
    _T_GOAWAY = 3
    _MAX_TYPE = 3
    _F_SYN = 1
    _F_ACK = 2
    _F_FIN = 4
    _F_RST = 8
    _GOAWAY_NORMAL = 0
    _GOAWAY_INTERNAL = 2
    _INITIAL_WINDOW = 256 * 1024
    _MAX_DATA_FRAME = 64 * 1024
    _PEER_MAX_STREAMS = 1024

cdef int64_t _MAX_U32 = 0xFFFFFFFF
cdef long long _LLONG_MAX = 0x7FFFFFFFFFFFFFFF


# -- C helpers ---------------------------------------------------------------

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


cdef inline bint _small_int(object o, long long lo, long long hi) noexcept:
    # An exact int in lo..hi (the fast path); anything else takes the pure twin's.
    cdef int overflow = 0
    cdef long long v
    if type(o) is not int:
        return False
    v = PyLong_AsLongLongAndOverflow(o, &overflow)
    return not overflow and lo <= v <= hi


# -- events ----------------------------------------------------------------
# StreamDataReceived and SendCapacityAvailable are built once per chunk, and
# a frozen dataclass's __init__ (three object.__setattr__ calls) costs more
# than the rest of the chunk's handling. When the classes are what we expect
# (slotted, every field a plain object slot, nothing run after __init__, the
# default allocator; see _check_event_layout at the bottom), the instance is
# allocated as object.__new__ would and its slots are filled directly.
# Otherwise the class is called as usual.

cdef extern from "structmember.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset

cdef extern from "Python.h":
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    PyObject* PyType_GenericAlloc(PyTypeObject* t, Py_ssize_t nitems)
    void* PyType_GetSlot(PyTypeObject* t, int slot) except? NULL
    enum: Py_tp_alloc

cdef enum:
    _T_OBJECT_EX = 16

cdef Py_ssize_t _SDR_OFF[3]
cdef Py_ssize_t _SCA_OFF[3]
cdef bint _FAST_EVENTS = False


cdef inline void _put_slot(object o, Py_ssize_t off, object v) noexcept:
    # Only on a fresh instance, whose slot is still NULL.
    Py_INCREF(v)
    (<PyObject**>((<char*><PyObject*>o) + off))[0] = <PyObject*>v


cdef inline object _event3(object cls, Py_ssize_t* off, object a, object b, object c):
    # What object.__new__(cls) does for a class without __new__ of its own.
    cdef PyObject* raw = PyType_GenericAlloc(<PyTypeObject*>cls, 0)
    if raw == NULL:
        raise MemoryError()
    cdef object o = <object>raw
    Py_DECREF(o)  # <object> took a second reference
    _put_slot(o, off[0], a)
    _put_slot(o, off[1], b)
    _put_slot(o, off[2], c)
    return o


cdef inline object _data_event(object sid, object chunk, bint fin):
    if _FAST_EVENTS:
        return _event3(StreamDataReceived, _SDR_OFF, sid, chunk, fin)
    return StreamDataReceived(sid, chunk, fin)


cdef inline object _drained_event(object sid, int64_t drained, int64_t buffered):
    if _FAST_EVENTS:
        return _event3(SendCapacityAvailable, _SCA_OFF, sid, drained, buffered)
    return SendCapacityAvailable(sid, drained, buffered)


cdef bint _slot_offsets(object cls, tuple names, Py_ssize_t* out) except -1:
    cdef PyMemberDescrObject* d
    for i, name in enumerate(names):
        descr = cls.__dict__.get(name)
        if type(descr) is not _MemberDescriptorType:
            return False
        d = <PyMemberDescrObject*><PyObject*>descr
        if d.d_member.type != _T_OBJECT_EX:
            return False
        out[i] = d.d_member.offset
    return True


cdef bint _layout_ok(object cls, tuple names, Py_ssize_t* off, tuple sample) except -1:
    if tuple(f.name for f in _dataclasses.fields(cls)) != names:
        return False
    if hasattr(cls, "__post_init__") or "__dict__" in cls.__dict__:
        return False
    if cls.__new__ is not object.__new__:
        return False
    if PyType_GetSlot(<PyTypeObject*>cls, Py_tp_alloc) != <void*>PyType_GenericAlloc:
        return False
    if not _slot_offsets(cls, names, off):
        return False
    made = _event3(cls, off, sample[0], sample[1], sample[2])
    expected = cls(*sample)
    return made == expected and repr(made) == repr(expected)


def _check_event_layout():
    """Enable the direct construction of the two per-chunk events if it is safe."""
    global _FAST_EVENTS
    _FAST_EVENTS = False
    _FAST_EVENTS = (
        _layout_ok(StreamDataReceived, ("stream_id", "data", "end_stream"), _SDR_OFF,
                   (1, b"x", True))
        and _layout_ok(SendCapacityAvailable, ("stream_id", "drained", "buffered"), _SCA_OFF,
                       (1, 2, 3))
    )
    return _FAST_EVENTS


# -- headers -----------------------------------------------------------------

def encode_header(frame_type, flags, stream_id, length):
    """The 12-byte header of one frame.

    Raises:
        ValueError: a field is out of range (type 0..3, flags 16 bits, stream
            id and length 32 bits).
    """
    if not (_small_int(frame_type, 0, _MAX_TYPE) and _small_int(flags, 0, 0xFFFF)
            and _small_int(stream_id, 0, _MAX_U32) and _small_int(length, 0, _MAX_U32)):
        return _py.encode_header(frame_type, flags, stream_id, length)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEADER_SIZE)
    _write_header(<unsigned char*>PyBytes_AS_STRING(out), <unsigned int>frame_type,
                  <unsigned int>flags, <uint32_t>stream_id, <uint32_t>length)
    return out


def decode_header(data, offset=0):
    """``(type, flags, stream_id, length)`` of the header at ``offset``.

    Raises:
        ShortHeader: fewer than 12 bytes from ``offset``.
        InvalidVersion: the version byte is not 0.
        InvalidType: the type byte is above 3.
    """
    cdef Py_ssize_t off
    cdef const unsigned char* q
    if type(data) is not bytes or type(offset) is not int:
        return _py.decode_header(data, offset)
    off = offset
    if off < 0 or PyBytes_GET_SIZE(data) - off < _HEADER_SIZE:
        return _py.decode_header(data, offset)  # raises ShortHeader
    q = <const unsigned char*>PyBytes_AS_STRING(data) + off
    if q[0] != _VERSION:
        raise InvalidVersion(f"yamux: unsupported version {q[0]}")
    if q[1] > _MAX_TYPE:
        raise InvalidType(f"yamux: unknown frame type {q[1]}")
    return (<int>q[1], <int>_be16(q + 2), <long long>_be32(q + 4), <long long>_be32(q + 8))


# -- per-stream state ----------------------------------------------------------

@cython.final
@cython.freelist(64)
cdef class _Stream:
    """State of one stream; dropped once both directions are over (internal)."""


cdef inline _Stream _new_stream(uint32_t sid, unsigned int hello, int64_t extra, bint ours):
    cdef _Stream s = _Stream.__new__(_Stream)
    s.id = sid
    s.key = sid
    s.send_window = _INITIAL_WINDOW
    s.queue = None  # made when data first waits for the window
    s.hello = hello
    s.extra = extra
    s.recv_window = _INITIAL_WINDOW
    s.ours = ours
    return s


# -- session -------------------------------------------------------------------

cdef class YamuxSession:
    """One yamux session over a reliable byte stream (TLS over TCP).

    ``client`` picks the stream-id parity (odd for the dialer). ``window`` is
    the receive window we offer each stream (at least 256 KiB, the yamux
    initial window; more is announced on the stream's first frame).
    ``max_streams`` bounds the streams the peer may have open at once; a SYN
    beyond it is answered with RST.

    Raises:
        ValueError: ``window`` below 256 KiB or above 2**32-1, ``max_streams`` < 1.
    """

    def __cinit__(self, *args, **kwargs):
        self._streams = {}
        self._gaps = set()
        self._hello = []
        self._events = []
        self._drained = []
        self._objs = []
        self._hbuf = NULL
        self._seg = NULL

    def __dealloc__(self):
        PyMem_Free(self._hbuf)
        PyMem_Free(self._seg)
        self._hbuf = NULL
        self._seg = NULL

    def __init__(self, *, client, window=_INITIAL_WINDOW, max_streams=1024):
        if not _INITIAL_WINDOW <= window <= _MAX_U32:
            raise ValueError(f"yamux: window must be {_INITIAL_WINDOW}..{_MAX_U32}, not {window}")
        if max_streams < 1:
            raise ValueError(f"yamux: max_streams must be >= 1, not {max_streams}")
        self.client = client
        self.window = window
        self.max_streams = max_streams
        self.peer_max_streams = _PEER_MAX_STREAMS
        self.reset_code = _RESET_CODE
        self.pong = None
        self._half = self.window // 2
        self._extra = self.window - _INITIAL_WINDOW
        self._next_id = 1 if self.client else 2
        self._peer_parity = 0 if self.client else 1
        self._peer_max = -1 if self._peer_parity else 0

    def __reduce_ex__(self, protocol):
        raise TypeError(f"cannot pickle or copy {type(self).__name__!r} object")

    # -- sans-IO driving --------------------------------------------------

    def receive_data(self, data):
        """Feed bytes read from the byte stream (any cut, in order)."""
        cdef Py_buffer view
        if self._closed or not data:
            return None
        if type(data) is not bytes:
            # A contiguous buffer (bytearray, memoryview: a BufferedProtocol's
            # read buffer) is parsed in place; anything else goes through
            # bytes(), as in the pure twin.
            try:
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            except (TypeError, BufferError):
                data = bytes(data)
            else:
                try:
                    self._feed(<const unsigned char*>view.buf, view.len, None)
                except ProtocolError as exc:
                    self._fail(exc)
                finally:
                    PyBuffer_Release(&view)
                return None
        try:
            self._feed(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                       data)
        except ProtocolError as exc:
            self._fail(exc)
        return None

    def data_to_send(self):
        """Everything pending for the byte stream (``b""`` if nothing)."""
        if self._hello:
            self._flush_hello()
        cdef Py_ssize_t total = self._hlen + self._ptotal
        if total == 0:
            return b""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
        cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out)
        cdef Py_ssize_t h = 0
        cdef Py_ssize_t i, at, off, length
        cdef Py_ssize_t* seg = self._seg
        cdef list objs = self._objs
        for i in range(self._nseg):
            at = seg[3 * i]
            off = seg[3 * i + 1]
            length = seg[3 * i + 2]
            if at > h:
                memcpy(dst, self._hbuf + h, at - h)
                dst += at - h
                h = at
            memcpy(dst, PyBytes_AS_STRING(<bytes>objs[i]) + off, length)
            dst += length
        if self._hlen > h:
            memcpy(dst, self._hbuf + h, self._hlen - h)
        self._clear_out()
        return out

    def next_event(self):
        """The next event, or ``None``."""
        cdef list events = self._events
        cdef Py_ssize_t head = self._ev_head
        if head == len(events):
            if not self._drained:
                return None
            self._report()
            if head == len(events):
                return None
        event = events[head]
        head += 1
        if head == len(events):
            del events[:]
            head = 0
        self._ev_head = head
        return event

    def connection_lost(self, reason="connection lost"):
        """The byte stream ended (EOF or error): the session is over."""
        self._finish(_GOAWAY_NORMAL, reason, False)

    # -- application API --------------------------------------------------

    @property
    def closed(self):
        """True once :class:`ConnectionClosed` was queued."""
        return self._closed

    @property
    def stream_count(self):
        """Streams with state here (either direction not over yet)."""
        return len(self._streams)

    def open_stream(self):
        """Open a stream and return its id; the SYN rides on its first frame.

        Raises:
            ConnectionClosedError: the session is closed.
            StreamsExhausted: no stream id is left on our side.
        """
        if self._closed:
            raise ConnectionClosedError("connection is closed")
        cdef int64_t sid = self._next_id
        if sid > _MAX_U32:
            raise StreamsExhausted("yamux: stream ids exhausted")
        self._next_id = sid + 2
        cdef _Stream s = _new_stream(<uint32_t>sid, _F_SYN, self._extra, True)
        self._streams[s.key] = s
        self._ours += 1
        self._hello.append(s.key)
        return s.key

    def streams_available(self):
        """Streams :meth:`open_stream` can open within what the peer is assumed to accept."""
        if self._closed:
            return 0
        cdef int64_t ids_left = (
            (_MAX_U32 - self._next_id) // 2 + 1 if self._next_id <= _MAX_U32 else 0
        )
        cdef int64_t left = self.peer_max_streams - self._ours
        if ids_left < left:
            left = ids_left
        return left if left > 0 else 0

    def send(self, stream_id, data, end_stream=False):
        """Queue ``data`` (and FIN if ``end_stream``); never blocks, never refuses.

        What fits in the peer's window is framed at once, the rest waits for a
        WindowUpdate (:meth:`send_buffered`, :class:`SendCapacityAvailable`).

        Raises:
            ConnectionClosedError: the session is closed.
            StreamClosedError: unknown stream, or our side was reset or finished.
        """
        if self._closed:
            raise ConnectionClosedError("connection is closed")
        cdef _Stream s = self._streams.get(stream_id)
        if s is None or s.fin_queued or s.send_done:
            raise StreamClosedError(f"stream {stream_id}: sending side is closed")
        if type(data) is not bytes:
            data = bytes(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef bint fin = end_stream
        cdef unsigned int flags
        cdef uint32_t sid = s.id
        if s.queued == 0 and n <= s.send_window and n <= _MAX_DATA_FRAME:
            if n:
                flags = self._greet(sid, s) if s.hello else 0
                if fin:
                    flags |= _F_FIN
                self._emit(_T_DATA, flags, sid, <uint32_t>n)
                self._emit_payload(data, 0, n)
                s.send_window -= n
                self._add_drained(s, n)
            elif fin:
                flags = self._greet(sid, s) if s.hello else 0
                self._emit(_T_WINDOW, flags | _F_FIN, sid, 0)
            else:
                return None
            if fin:
                s.fin_queued = True
                s.send_done = True
                if s.recv_done:
                    self._forget(sid, s)
            return None
        if n:
            if s.queue is None:
                s.queue = []
            s.queue.append(data)
            s.queued += n
        if fin:
            s.fin_queued = True
        self._push(sid, s)

    def send_buffered(self, stream_id):
        """Bytes queued on ``stream_id`` beyond the peer's window, not yet framed."""
        cdef _Stream s = self._streams.get(stream_id)
        return 0 if s is None else s.queued

    def grant(self, stream_id, n):
        """Report ``n`` bytes of ``stream_id`` consumed; the peer may send that much more.

        Clamped to what was delivered and not yet granted; returns the bytes
        granted. The WindowUpdate goes out once half a window is pending.
        """
        cdef _Stream s = self._streams.get(stream_id)
        cdef int overflow = 0
        cdef long long k
        if s is None or s.released or n <= 0:
            return 0
        k = PyLong_AsLongLongAndOverflow(n, &overflow)
        if overflow:
            k = _LLONG_MAX
        if k > s.unconsumed:
            k = s.unconsumed
            if k <= 0:
                return 0
        s.unconsumed -= k
        cdef int64_t pending = s.pending + k
        if pending >= self._half and not s.recv_done:
            self._window_update(s.id, s, pending)
        else:
            s.pending = pending
        return k

    def unconsumed(self, stream_id):
        """Bytes delivered on ``stream_id`` and not yet granted back."""
        cdef _Stream s = self._streams.get(stream_id)
        return 0 if s is None or s.released else s.unconsumed

    def release(self, stream_id):
        """Stop reading ``stream_id``: its data is dropped and credited back, now and later."""
        cdef _Stream s = self._streams.get(stream_id)
        if s is None or s.released:
            return None
        s.released = True
        cdef int64_t pending = s.pending + s.unconsumed
        s.unconsumed = 0
        if pending >= self._half and not s.recv_done and not self._closed:
            self._window_update(s.id, s, pending)
        else:
            s.pending = pending

    def reset_stream(self, stream_id, error_code):
        """Abort the stream with RST (yamux: both directions; no code on the wire).

        Queued data is dropped. If the receive side was still open, a
        :class:`StreamReset` with ``error_code`` reports its end.
        """
        if self._closed:
            return None
        cdef _Stream s = self._streams.get(stream_id)
        if s is None:
            return None
        if s.hello != _F_SYN:  # a stream never announced needs no RST
            self._emit(_T_WINDOW, _F_RST | s.hello, s.id, 0)
        s.hello = 0
        if s.in_drained:
            s.in_drained = False
            s.drained = 0
        if not s.recv_done:
            self._events.append(StreamReset(stream_id, error_code))
        self._forget(s.id, s)

    def stop_stream(self, stream_id, error_code):
        """Stop reading and abort: yamux has no STOP_SENDING, so this is :meth:`reset_stream`."""
        self.reset_stream(stream_id, error_code)

    def close(self, code=0, reason=""):
        """Send GoAway and end the session (one :class:`ConnectionClosed`).

        ``code`` 0, 1 or 2 goes on the wire as is; any other code as 2
        (internal error). The event carries ``code`` and ``reason``.
        """
        if self._closed:
            return None
        wire = code if 0 <= code <= _GOAWAY_INTERNAL else _GOAWAY_INTERNAL
        if type(wire) is not int:
            _py._pack(_VERSION, _T_GOAWAY, 0, 0, wire)  # the pure twin's error, if any
        self._emit(_T_GOAWAY, 0, 0, <uint32_t>wire)
        self._finish(code, reason, True)

    def ping(self, value):
        """Send a Ping; the peer's answer sets :attr:`pong` to ``value``.

        Raises:
            ConnectionClosedError: the session is closed.
            ValueError: ``value`` is not a u32.
        """
        if self._closed:
            raise ConnectionClosedError("connection is closed")
        if not 0 <= value <= _MAX_U32:
            raise ValueError(f"yamux: ping value out of range: {value}")
        if type(value) is not int:
            _py._pack(_VERSION, _T_PING, _F_SYN, 0, value)  # the pure twin's error, if any
        self._emit(_T_PING, _F_SYN, 0, <uint32_t>value)

    # -- receive -----------------------------------------------------------

    cdef int _feed(self, const unsigned char* p, Py_ssize_t n, object whole) except -1:
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take
        if self._left:
            pos = self._payload(p, 0, n, whole)
        if self._hdr_len and pos < n:
            # complete the cut header, then handle its frame
            take = _HEADER_SIZE - self._hdr_len
            if take > n - pos:
                take = n - pos
            memcpy(self._hdr + self._hdr_len, p + pos, take)
            self._hdr_len += take
            pos += take
            if self._hdr_len < _HEADER_SIZE:
                return 0
            self._hdr_len = 0
            pos = self._header(self._hdr, p, pos, n, None)
            if self._closed:
                return 0
        while pos < n:
            if n - pos < _HEADER_SIZE:
                memcpy(self._hdr, p + pos, n - pos)
                self._hdr_len = n - pos
                return 0
            pos = self._header(p + pos, p, pos + _HEADER_SIZE, n, None)
            if self._closed:
                return 0
        return 0

    cdef Py_ssize_t _header(self, const unsigned char* h, const unsigned char* p,
                            Py_ssize_t pos, Py_ssize_t n, object whole) except -1:
        # One frame whose header is ``h``; its payload (Data) starts at p[pos].
        cdef unsigned int kind = h[1]
        cdef unsigned int flags = _be16(h + 2)
        cdef uint32_t sid = _be32(h + 4)
        cdef uint32_t length = _be32(h + 8)
        cdef _Stream s
        cdef int64_t window
        if h[0] != _VERSION:
            raise InvalidVersion(f"yamux: unsupported version {h[0]}")
        if kind == _T_DATA:
            s = self._lookup(sid)
            if s is None or flags & _F_SYN:
                s = self._unknown(sid, flags)
            if s is not None and flags & _F_RST:
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
                elif flags & _F_FIN:
                    if s.recv_done:
                        raise StreamClosedByPeer(f"yamux: second FIN on stream {sid}")
                    self._peer_fin(sid, s, b"")
            if length:
                self._left = length
                self._rx_id = sid
                self._rx = s
                self._rx_fin = (flags & _F_FIN) != 0
                if pos < n:
                    pos = self._payload(p, pos, n, whole)
        elif kind == _T_WINDOW:
            s = self._lookup(sid)
            if s is None or flags & _F_SYN:
                s = self._unknown(sid, flags)
            if s is None:
                return pos
            if flags & _F_RST:
                self._peer_reset(sid, s)
                return pos
            if length:
                window = s.send_window + length
                if window > _MAX_U32:
                    raise WindowExceeded(f"yamux: stream {sid}: send window over 2**32-1")
                s.send_window = window
                if s.queued or s.fin_queued and not s.send_done:
                    self._push(sid, s)
            if flags & _F_FIN:
                if s.recv_done:
                    raise StreamClosedByPeer(f"yamux: second FIN on stream {sid}")
                self._peer_fin(sid, s, b"")
        elif kind == _T_PING:
            if sid != 0:
                raise InvalidStreamId(f"yamux: Ping on stream {sid}")
            if flags & _F_SYN:
                self._emit(_T_PING, _F_ACK, 0, length)
            elif flags & _F_ACK:
                self.pong = length
        elif kind == _T_GOAWAY:
            if sid != 0:
                raise InvalidStreamId(f"yamux: GoAway on stream {sid}")
            name = _GOAWAY_NAMES.get(length, f"code {length}")
            self._finish(length, f"peer sent GoAway ({name})", False)
        else:
            raise InvalidType(f"yamux: unknown frame type {kind}")
        return pos

    cdef Py_ssize_t _payload(self, const unsigned char* p, Py_ssize_t pos, Py_ssize_t n,
                             object whole) except -1:
        # Consume the current Data payload from p[pos:n]; return the new pos.
        cdef int64_t left = self._left
        cdef Py_ssize_t take = n - pos
        if take > left:
            take = <Py_ssize_t>left
        left -= take
        self._left = left
        cdef _Stream s = self._rx
        if s is None or s.recv_done:  # discarded, or reset while the frame arrived
            return pos + take
        cdef uint32_t sid = self._rx_id
        cdef bint fin = self._rx_fin and not left
        if s.released:
            s.pending += take
            if fin:
                s.recv_done = True
                if s.send_done:
                    self._forget(sid, s)
            elif s.pending >= self._half and not s.recv_done:
                self._window_update(sid, s, s.pending)
            return pos + take
        if whole is not None and take == n and pos == 0:
            chunk = whole
        else:
            chunk = PyBytes_FromStringAndSize(<const char*>p + pos, take)
        s.unconsumed += take
        if fin:
            self._peer_fin(sid, s, chunk)
        else:
            self._events.append(_data_event(s.key, chunk, False))
        return pos + take

    cdef _Stream _lookup(self, uint32_t sid):
        # The table, behind a one-entry cache: frames come in runs per stream.
        cdef _Stream s = self._last
        if s is not None and s.id == sid:
            return s
        s = self._streams.get(sid)
        if s is not None:
            self._last = s
        return s

    cdef _Stream _unknown(self, uint32_t sid, unsigned int flags):
        # A frame with SYN, or for a stream not in the table: the stream, or
        # None to ignore the frame (a stream that ended, or refused).
        if sid == 0:
            raise InvalidStreamId("yamux: stream frame on stream 0")
        cdef bint peer_id = (sid & 1) == self._peer_parity
        if not flags & _F_SYN:
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
        cdef int64_t top = self._peer_max
        cdef int64_t skipped
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
            self._emit(_T_WINDOW, _F_RST, sid, 0)
            return None
        cdef _Stream s = _new_stream(sid, _F_ACK, self._extra, False)
        self._streams[s.key] = s
        self._theirs += 1
        self._hello.append(s.key)
        return s

    # -- send ----------------------------------------------------------------

    cdef unsigned int _greet(self, uint32_t sid, _Stream s) except? 0xFFFF:
        # Flags for our first frame on s (SYN or ACK); announces extra window first.
        cdef unsigned int hello = s.hello
        s.hello = 0
        if s.extra:
            self._emit(_T_WINDOW, hello, sid, <uint32_t>s.extra)
            s.recv_window += s.extra
            s.extra = 0
            return 0
        return hello

    cdef int _flush_hello(self) except -1:
        cdef _Stream s
        for key in self._hello:
            s = self._streams.get(key)
            if s is not None and s.hello:
                self._emit(_T_WINDOW, s.hello, s.id, <uint32_t>s.extra)
                s.recv_window += s.extra
                s.extra = 0
                s.hello = 0
        del self._hello[:]
        return 0

    cdef int _window_update(self, uint32_t sid, _Stream s, int64_t delta) except -1:
        cdef unsigned int flags = self._greet(sid, s) if s.hello else 0
        self._emit(_T_WINDOW, flags, sid, <uint32_t>delta)
        s.recv_window += delta
        s.pending = 0
        return 0

    cdef int _push(self, uint32_t sid, _Stream s) except -1:
        # Frame queued data within the send window; FIN once the queue is empty.
        cdef list q = s.queue
        cdef int64_t window = s.send_window
        cdef int64_t sent = 0
        cdef Py_ssize_t size, take
        cdef unsigned int flags
        cdef bytes head
        while s.queued - sent > 0 and window > 0:
            head = <bytes>q[s.q_head]
            size = PyBytes_GET_SIZE(head) - s.q_off
            take = <Py_ssize_t>window if window < _MAX_DATA_FRAME else _MAX_DATA_FRAME
            if size <= take:
                take = size
            flags = self._greet(sid, s) if s.hello else 0
            if s.queued - sent == take and s.fin_queued:
                flags |= _F_FIN
                s.send_done = True
            self._emit(_T_DATA, flags, sid, <uint32_t>take)
            self._emit_payload(head, s.q_off, take)
            if take == size:
                q[s.q_head] = None
                s.q_head += 1
                s.q_off = 0
            else:
                s.q_off += take
            window -= take
            sent += take
        s.send_window = window
        if sent:
            s.queued -= sent
            self._add_drained(s, sent)
            if s.queued == 0:
                s.queue = None
                s.q_head = 0
            elif s.q_head >= 32:
                del q[:s.q_head]
                s.q_head = 0
        if s.fin_queued and s.queued == 0 and not s.send_done:
            flags = self._greet(sid, s) if s.hello else 0
            self._emit(_T_WINDOW, flags | _F_FIN, sid, 0)
            s.send_done = True
        if s.send_done and s.recv_done:
            self._forget(sid, s)
        return 0

    cdef int _add_drained(self, _Stream s, int64_t n) except -1:
        if not s.in_drained:
            s.in_drained = True
            self._drained.append(s)
        s.drained += n
        return 0

    # -- endings -------------------------------------------------------------

    cdef int _peer_fin(self, uint32_t sid, _Stream s, object chunk) except -1:
        s.recv_done = True
        if not s.released:
            self._events.append(_data_event(s.key, chunk, True))
        if s.send_done:
            self._forget(sid, s)
        return 0

    cdef int _peer_reset(self, uint32_t sid, _Stream s) except -1:
        code = self.reset_code
        if not s.recv_done:
            self._events.append(StreamReset(sid, code))
        if not s.send_done:
            self._events.append(StopSendingReceived(sid, code))
        if s.in_drained:
            s.in_drained = False
            s.drained = 0
        self._forget(sid, s)
        return 0

    cdef int _forget(self, uint32_t sid, _Stream s) except -1:
        s.recv_done = True
        s.send_done = True
        s.queue = None
        s.q_head = 0
        s.q_off = 0
        s.queued = 0
        if self._last is s:
            self._last = None
        if self._streams.pop(sid, None) is not None:
            if s.ours:
                self._ours -= 1
            else:
                self._theirs -= 1
        return 0

    cdef int _report(self) except -1:
        cdef _Stream s
        for obj in self._drained:
            s = <_Stream>obj
            if s.in_drained:
                self._events.append(_drained_event(s.key, s.drained, s.queued))
                s.in_drained = False
                s.drained = 0
        del self._drained[:]
        return 0

    cdef int _fail(self, object exc) except -1:
        if self._closed:
            return 0
        code = exc.goaway_code
        self._emit(_T_GOAWAY, 0, 0, <uint32_t>code)
        self._finish(code, str(exc), True)
        return 0

    cdef int _finish(self, object code, str reason, bint by_us) except -1:
        if self._closed:
            return 0
        self._closed = True
        self._streams.clear()
        self._last = None
        for obj in self._drained:
            (<_Stream>obj).in_drained = False
            (<_Stream>obj).drained = 0
        del self._drained[:]
        del self._hello[:]
        self._gaps.clear()
        self._ours = 0
        self._theirs = 0
        self._hdr_len = 0
        self._left = 0
        self._rx = None
        self._events.append(ConnectionClosed(error_code=code, reason=reason, by_us=by_us))
        return 0

    # -- output buffer ---------------------------------------------------------

    cdef int _emit(self, unsigned int ftype, unsigned int flags, uint32_t sid,
                   uint32_t length) except -1:
        cdef Py_ssize_t need = self._hlen + _HEADER_SIZE
        cdef Py_ssize_t cap
        cdef void* grown
        if need > self._hcap:
            cap = self._hcap * 2 if self._hcap else 1024
            while cap < need:
                cap *= 2
            grown = PyMem_Realloc(self._hbuf, cap)
            if grown == NULL:
                raise MemoryError()
            self._hbuf = <unsigned char*>grown
            self._hcap = cap
        _write_header(self._hbuf + self._hlen, ftype, flags, sid, length)
        self._hlen = need
        return 0

    cdef int _emit_payload(self, object obj, Py_ssize_t off, Py_ssize_t length) except -1:
        # ``obj`` (bytes) from ``off`` goes right after the headers emitted so far.
        cdef Py_ssize_t cap
        cdef void* grown
        if self._nseg == self._segcap:
            cap = self._segcap * 2 if self._segcap else 64
            grown = PyMem_Realloc(self._seg, cap * 3 * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self._seg = <Py_ssize_t*>grown
            self._segcap = cap
        cdef Py_ssize_t* seg = self._seg + 3 * self._nseg
        seg[0] = self._hlen
        seg[1] = off
        seg[2] = length
        self._objs.append(obj)
        self._nseg += 1
        self._ptotal += length
        return 0

    cdef void _clear_out(self) noexcept:
        self._hlen = 0
        self._nseg = 0
        self._ptotal = 0
        del self._objs[:]


# -- shared Python pieces ------------------------------------------------------
# Imported last on purpose, as in _codec.pyx: importing outrelay.mux runs its
# __init__, which picks this module and reads its names.

import dataclasses as _dataclasses  # noqa: E402
from types import MemberDescriptorType as _MemberDescriptorType  # noqa: E402

from outrelay.mux import _session_py as _py  # noqa: E402
from outrelay.mux import constants as _c  # noqa: E402
from outrelay.mux.errors import (  # noqa: E402
    ConnectionClosedError,
    DuplicateStream,
    InvalidStreamId,
    InvalidType,
    InvalidVersion,
    ProtocolError,
    StreamClosedByPeer,
    StreamClosedError,
    StreamsExhausted,
    WindowExceeded,
)
from outrelay.transport.events import (  # noqa: E402
    ConnectionClosed,
    SendCapacityAvailable,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

_GOAWAY_NAMES = _py._GOAWAY_NAMES
_RESET_CODE = _c.RESET_CODE

if (
    _c.HEADER_SIZE, _c.VERSION, _c.TYPE_DATA, _c.TYPE_WINDOW_UPDATE, _c.TYPE_PING,
    _c.TYPE_GO_AWAY, _c.MAX_TYPE, _c.FLAG_SYN, _c.FLAG_ACK, _c.FLAG_FIN, _c.FLAG_RST,
    _c.GOAWAY_NORMAL, _c.GOAWAY_INTERNAL_ERROR, _c.INITIAL_WINDOW, _c.MAX_DATA_FRAME,
    _c.PEER_MAX_STREAMS, _c.MAX_U32,
) != (
    _HEADER_SIZE, _VERSION, _T_DATA, _T_WINDOW, _T_PING, _T_GOAWAY, _MAX_TYPE, _F_SYN,
    _F_ACK, _F_FIN, _F_RST, _GOAWAY_NORMAL, _GOAWAY_INTERNAL, _INITIAL_WINDOW,
    _MAX_DATA_FRAME, _PEER_MAX_STREAMS, _MAX_U32,
):
    raise ImportError("outrelay._fast._yamux is out of date with outrelay.mux.constants: rebuild")

_check_event_layout()
