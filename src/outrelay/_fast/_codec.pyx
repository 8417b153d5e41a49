# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
"""ORP frame codec, compiled twin of ``outrelay.orp._codec_py``.

Same API, same exceptions, same messages (the message builders are shared
with the pure twin); see that module for the wire layout. Why it is fast:
headers are read and written with C integer ops on raw buffer pointers,
arguments are converted straight to C integers, Frames are built without
``__init__`` from a freelist, and the decoder cuts payloads straight out of
the fed buffer (one copy into the payload ``bytes``). A partial frame's
payload is a ``bytes`` object nobody else sees, filled in place and grown
with what arrives (doubling, capped at the declared length, so it ends at
exactly that length and is handed out without a second copy); a declared
length is never reserved before its bytes are in.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
    _PyBytes_Resize,
)
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF, Py_XINCREF
from libc.stdint cimport uint32_t
from libc.string cimport memcpy

__all__ = ["Frame", "FrameDecoder", "decode_header", "encode_frame", "encode_header"]

cdef enum:
    _HEADER_SIZE = 8
    _VERSION = 1
    _MAX_VERSION = 7
    _MAX_TYPE = 0x7FF
    _MAX_FLAGS = 0xFFFF
    _MAX_PAYLOAD = 1 << 24
    _REPR_PAYLOAD = 32
    # A partial frame's first payload allocation is at least this (never more
    # than its declared length), so a small frame split across two chunks is
    # allocated once; beyond it, memory follows what arrives.
    _MIN_RESERVE = 4096


# -- C helpers ---------------------------------------------------------------

cdef inline long long _as_int(object o) except? -1:
    # operator.index semantics; a value too big for C is returned as -1,
    # which every caller treats as out of range (and re-reads for the message).
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


cdef inline void _write_header(unsigned char* q, unsigned int ftype, unsigned int flags,
                               uint32_t length) noexcept:
    cdef unsigned int word0 = (_VERSION << 13) | ftype
    q[0] = <unsigned char>(word0 >> 8)
    q[1] = <unsigned char>word0
    q[2] = <unsigned char>(flags >> 8)
    q[3] = <unsigned char>flags
    q[4] = <unsigned char>(length >> 24)
    q[5] = <unsigned char>(length >> 16)
    q[6] = <unsigned char>(length >> 8)
    q[7] = <unsigned char>length


cdef inline int _check_header(const unsigned char* q, uint32_t limit) except -1:
    cdef unsigned int version = q[0] >> 5
    if version != _VERSION:
        raise _bad_version(version)
    cdef uint32_t length = _be32(q + 4)
    if length > limit:
        raise _too_large(length, limit)
    return 0


cdef inline Frame _new_frame(int ftype, object payload, int flags):
    # Skips __init__: the values come from a header we already validated.
    cdef Frame f = Frame.__new__(Frame)
    f.type = ftype
    f.payload = payload
    f.flags = flags
    f.version = _VERSION
    return f


# -- Frame -------------------------------------------------------------------

@cython.final
@cython.freelist(256)
cdef class Frame:
    """One decoded (or to-be-encoded) ORP frame; immutable and hashable.

    ``type`` is a plain int (it compares equal to ``FrameType`` members),
    ``payload`` is ``bytes`` (``b""`` when empty). Frames of the two twins
    compare equal when their four fields do.

    Raises InvalidType, InvalidFlags, InvalidVersion (version outside 0..7),
    PayloadTooLarge or TypeError (non-integer field, payload not bytes-like).
    """

    def __init__(self, type, payload=b"", flags=0, version=_VERSION):
        cdef long long t = _as_int(type)
        cdef long long f = _as_int(flags)
        cdef long long v = _as_int(version)
        if not isinstance(payload, bytes):
            payload = bytes(memoryview(payload))
        if t < 0 or t > _MAX_TYPE:
            raise _bad_type(_index(type))
        if PyBytes_GET_SIZE(payload) > _MAX_PAYLOAD:
            raise _bad_length(PyBytes_GET_SIZE(payload))
        if f < 0 or f > _MAX_FLAGS:
            raise _bad_flags(_index(flags))
        if v < 0 or v > _MAX_VERSION:
            raise InvalidVersion(f"orp: version {_index(version)} out of range (0..{_MAX_VERSION})")
        self.type = <int>t
        self.payload = payload
        self.flags = <int>f
        self.version = <int>v

    def __eq__(self, other):
        cdef Frame o
        if type(other) is Frame:
            o = <Frame>other
            return (self.type == o.type and self.flags == o.flags
                    and self.version == o.version and self.payload == o.payload)
        if type(other) is _PyFrame:
            return (self.type == other.type and self.flags == other.flags
                    and self.version == other.version and self.payload == other.payload)
        return NotImplemented

    def __ne__(self, other):
        result = self.__eq__(other)
        if result is NotImplemented:
            return result
        return not result

    def __hash__(self):
        return hash((self.type, self.payload, self.flags, self.version))

    def __repr__(self):
        payload = self.payload
        shown = repr(payload)
        if len(payload) > _REPR_PAYLOAD:
            shown = f"{payload[:_REPR_PAYLOAD]!r}...({len(payload)} bytes)"
        return (
            f"Frame(type={_type_label(self.type)}, payload={shown}, "
            f"flags={self.flags:#06x}, version={self.version})"
        )


# -- headers -----------------------------------------------------------------

def encode_header(ftype, length, flags=0):
    """Return the 8-byte header for a frame (version 1, reserved bits 0).

    Raises InvalidType (type outside 0..0x7FF), PayloadTooLarge (length over
    MAX_PAYLOAD), ValueError (negative length), InvalidFlags (flags outside
    0..0xFFFF), TypeError (an argument is not an integer).
    """
    cdef long long t = _as_int(ftype)
    cdef long long n = _as_int(length)
    cdef long long f = _as_int(flags)
    if t < 0 or t > _MAX_TYPE:
        raise _bad_type(_index(ftype))
    if n < 0 or n > _MAX_PAYLOAD:
        raise _bad_length(_index(length))
    if f < 0 or f > _MAX_FLAGS:
        raise _bad_flags(_index(flags))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEADER_SIZE)
    _write_header(<unsigned char*>PyBytes_AS_STRING(out), <unsigned int>t, <unsigned int>f,
                  <uint32_t>n)
    return out


cdef inline tuple _decode(const unsigned char* q, Py_ssize_t n):
    if n < _HEADER_SIZE:
        raise ShortHeader(f"orp: short header: {n} bytes, need {_HEADER_SIZE}")
    _check_header(q, _MAX_PAYLOAD)
    return (_VERSION, <int>(_be16(q) & _MAX_TYPE), <int>_be16(q + 2), <long long>_be32(q + 4))


def decode_header(buf):
    """Parse the first 8 bytes of ``buf`` into ``(version, type, flags, length)``.

    Reserved bits are ignored. Raises ShortHeader (fewer than 8 bytes),
    InvalidVersion (version other than 1), PayloadTooLarge (declared length
    over MAX_PAYLOAD), TypeError (not bytes-like).
    """
    cdef Py_buffer view
    if PyBytes_CheckExact(buf):
        return _decode(<const unsigned char*>PyBytes_AS_STRING(buf), PyBytes_GET_SIZE(buf))
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        return _decode(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


def encode_frame(ftype, payload=b"", flags=0):
    """Return header and payload as one contiguous ``bytes`` object.

    Raises like ``encode_header``, and TypeError if payload is not bytes-like.
    """
    cdef const char* src
    cdef Py_ssize_t n
    if PyBytes_CheckExact(payload) or isinstance(payload, bytes):
        src = PyBytes_AS_STRING(payload)
        n = PyBytes_GET_SIZE(payload)
    elif isinstance(payload, bytearray):
        src = PyByteArray_AS_STRING(payload)
        n = PyByteArray_GET_SIZE(payload)
    else:
        payload = bytes(memoryview(payload))
        src = PyBytes_AS_STRING(payload)
        n = PyBytes_GET_SIZE(payload)
    cdef long long t = _as_int(ftype)
    cdef long long f = _as_int(flags)
    if t < 0 or t > _MAX_TYPE:
        raise _bad_type(_index(ftype))
    if n > _MAX_PAYLOAD:
        raise _bad_length(n)
    if f < 0 or f > _MAX_FLAGS:
        raise _bad_flags(_index(flags))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEADER_SIZE + n)
    cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out)
    _write_header(dst, <unsigned int>t, <unsigned int>f, <uint32_t>n)
    if n:
        memcpy(dst + _HEADER_SIZE, src, n)
    return out


# -- stream decoder ----------------------------------------------------------

cdef class FrameDecoder:
    """Sans-IO ORP stream decoder: ``feed`` bytes in any split, get frames out.

    ``max_payload`` is the largest payload a frame may declare (MAX_PAYLOAD
    by default; control streams use MAX_CONTROL_PAYLOAD). A declared length
    over it is rejected as soon as its 8 header bytes are in, before any
    payload: PayloadTooLarge with the default limit, FrameTooLarge (which
    closes the connection) with a lower one.

    It buffers at most one partial frame, and only the bytes of it that have
    arrived: memory grows with what is received, never reserved at the
    declared length. Whole frames inside a fed chunk are cut straight out of
    it.

    Errors poison the decoder: frames decoded earlier in the failing
    ``feed`` call are dropped, the buffer is discarded, and every later
    ``feed`` or ``close`` raises the same error class with the same message
    again. Close the connection.
    """

    def __cinit__(self):
        self._hdr_len = 0
        self._payload = None
        self._length = 0
        self._got = 0
        self._error = None
        self._max = 0

    def __init__(self, max_payload=_MAX_PAYLOAD):
        """Raises ValueError (max_payload outside 0..MAX_PAYLOAD), TypeError (not an integer)."""
        cdef long long m = _as_int(max_payload)
        if m < 0 or m > _MAX_PAYLOAD:
            raise _bad_limit(_index(max_payload))
        self._max = <uint32_t>m

    @property
    def pending(self):
        """Bytes of an incomplete frame held in the buffer."""
        return self._hdr_len + self._got

    def __reduce_ex__(self, protocol):
        """Refuse pickling and copying (TypeError), as the pure twin does."""
        raise not_copyable("FrameDecoder")

    def feed(self, data):
        """Consume ``data``; return the frames it completes, in order.

        Raises InvalidVersion, PayloadTooLarge or FrameTooLarge on a bad
        header (and then poisons the decoder), TypeError if data is not
        bytes-like.
        """
        cdef Py_buffer view
        cdef bint release = False
        cdef const unsigned char* p
        cdef Py_ssize_t n
        if self._error is not None:
            self._raise_again()
        if PyBytes_CheckExact(data):
            p = <const unsigned char*>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        else:
            try:
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            except (TypeError, BufferError):
                # What the pure twin does with every non-bytes input; raises
                # the same TypeError for non-buffers, copies non-contiguous views.
                data = bytes(memoryview(data))
                p = <const unsigned char*>PyBytes_AS_STRING(data)
                n = PyBytes_GET_SIZE(data)
            else:
                release = True
                p = <const unsigned char*>view.buf
                n = view.len
        try:
            return self._run(p, n)
        except OrpError as exc:
            self._error = exc
            self._reset()
            raise
        finally:
            if release:
                PyBuffer_Release(&view)

    def close(self):
        """Declare the end of the stream.

        Returns None when it ended between frames. Raises TruncatedFrame
        (and poisons the decoder) when a partial frame is pending, or the
        poisoning error again.
        """
        if self._error is not None:
            self._raise_again()
        if self._hdr_len == 0:
            return None
        if self._hdr_len < _HEADER_SIZE:
            msg = (f"orp: truncated frame: stream ended after {self._hdr_len} of "
                   f"{_HEADER_SIZE} header bytes")
        else:
            msg = (f"orp: truncated frame: stream ended after {self._got} of {self._length} "
                   f"payload bytes ({_type_label(self._type)})")
        self._error = TruncatedFrame(msg)
        self._reset()
        raise self._error

    def _raise_again(self):
        raise self._error.__class__(*self._error.args)

    cdef void _reset(self) noexcept:
        self._hdr_len = 0
        self._payload = None
        self._length = 0
        self._got = 0

    cdef int _start(self) except -1:
        # The 8 header bytes of the partial frame are in: validate them. The
        # payload is allocated by _fill, as its bytes arrive.
        _check_header(self._hdr, self._max)
        self._type = _be16(self._hdr) & _MAX_TYPE
        self._flags = _be16(self._hdr + 2)
        self._length = _be32(self._hdr + 4)
        self._got = 0
        self._payload = None
        return 0

    cdef int _fill(self, const unsigned char* p, Py_ssize_t take) except -1:
        # Append ``take`` (> 0) payload bytes of the partial frame. Capacity
        # never exceeds the declared length, so it is exact once complete.
        cdef Py_ssize_t need = self._got + take
        cdef Py_ssize_t cap
        if self._payload is None:
            cap = need if need > _MIN_RESERVE else _MIN_RESERVE
            if cap > self._length:
                cap = self._length
            self._payload = PyBytes_FromStringAndSize(NULL, cap)
        else:
            cap = PyBytes_GET_SIZE(self._payload)
            if need > cap:
                cap = 2 * cap if 2 * cap < self._length else self._length
                if cap < need:
                    cap = need
                self._resize(cap)
        memcpy(PyBytes_AS_STRING(self._payload) + self._got, p, take)
        self._got = need
        return 0

    cdef int _resize(self, Py_ssize_t size) except -1:
        # _PyBytes_Resize reallocates in place and needs the only reference:
        # take it out of self._payload (which never escapes before completion).
        cdef PyObject* raw = <PyObject*>self._payload
        Py_XINCREF(raw)
        self._payload = None
        _PyBytes_Resize(&raw, size)  # on failure: raw freed and NULL, MemoryError
        self._payload = <object>raw
        Py_XDECREF(raw)
        return 0

    cdef object _done(self):
        # The completed partial frame (its payload is exactly _length bytes).
        cdef object payload = self._payload
        if payload is None:
            payload = b""
        cdef Frame frame = _new_frame(self._type, payload, self._flags)
        self._reset()
        return frame

    cdef list _run(self, const unsigned char* p, Py_ssize_t n):
        cdef list frames = []
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take
        cdef Py_ssize_t length
        cdef const unsigned char* q
        if self._hdr_len:
            # Complete the pending frame first.
            if self._hdr_len < _HEADER_SIZE:
                take = min(_HEADER_SIZE - self._hdr_len, n)
                memcpy(self._hdr + self._hdr_len, p, take)
                self._hdr_len += take
                pos = take
                if self._hdr_len < _HEADER_SIZE:
                    return frames
                self._start()
            take = min(self._length - self._got, n - pos)
            if take:
                self._fill(p + pos, take)
                pos += take
            if self._got < self._length:
                return frames
            frames.append(self._done())
        while n - pos >= _HEADER_SIZE:
            q = p + pos
            _check_header(q, self._max)
            length = _be32(q + 4)
            if n - pos - _HEADER_SIZE < length:
                break
            frames.append(_new_frame(
                _be16(q) & _MAX_TYPE,
                PyBytes_FromStringAndSize(<const char*>q + _HEADER_SIZE, length),
                _be16(q + 2),
            ))
            pos += _HEADER_SIZE + length
        if pos < n:
            # The start of the next frame: keep it as the one partial frame.
            take = min(<Py_ssize_t>_HEADER_SIZE, n - pos)
            memcpy(self._hdr, p + pos, take)
            self._hdr_len = take
            pos += take
            if take == _HEADER_SIZE:
                self._start()
                take = n - pos
                if take:
                    self._fill(p + pos, take)
        return frames


# -- shared Python pieces ------------------------------------------------------
# Imported last on purpose: importing anything under outrelay.orp runs its
# __init__, which picks this module and reads its functions. When this module
# is imported first (the tests and benchmarks do), they must already exist.

from operator import index as _index  # noqa: E402

from outrelay.orp._codec_py import Frame as _PyFrame  # noqa: E402
from outrelay.orp._codec_py import (  # noqa: E402
    _bad_flags,
    _bad_length,
    _bad_limit,
    _bad_type,
    _bad_version,
    _too_large,
    _type_label,
)
from outrelay.orp.errors import (  # noqa: E402
    InvalidVersion,
    OrpError,
    ShortHeader,
    TruncatedFrame,
    not_copyable,
)
