# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Resume ring buffer, compiled twin of ``outrelay.resume._ring_py`` (wire.md 6.2).

How this works: see the pure twin, whose algorithm this follows step for
step. Storage is a ``PyMem_Malloc`` block used circularly, allocated lazily,
grown geometrically up to the current capacity and reallocated down when the
capacity shrinks; bytes move with ``memcpy`` only. Every method runs without
releasing the GIL, which makes each call atomic across threads.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.number cimport PyNumber_Index
from libc.string cimport memcpy

from outrelay.resume.errors import PositionEvicted, bad_capacity, not_contiguous, not_copyable

cdef enum:
    MIN_ALLOC = 4096

# the same values as DEFAULT_RING_CAPACITY / DEFAULT_MIN_RING_CAPACITY of the twin
cdef Py_ssize_t _DEFAULT_CAP = 16 * 1024 * 1024
cdef Py_ssize_t _DEFAULT_MIN_CAP = 64 * 1024


cdef inline Py_ssize_t _max(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline Py_ssize_t _min(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline long long _position(object value, int* overflow) except? -1:
    """``value`` as a C position; ``overflow`` says +1/-1 when it does not fit."""
    if not isinstance(value, int):
        value = PyNumber_Index(value)
    return PyLong_AsLongLongAndOverflow(value, overflow)


cdef Py_ssize_t _capacity(object value, Py_ssize_t default) except? -1:
    """``operator.index(value)``, ``default`` when <= 0; OverflowError (the twin's words)."""
    cdef int overflow = 0
    cdef long long cap = _position(value, &overflow)
    if overflow:
        raise bad_capacity(PyNumber_Index(value))
    return default if cap <= 0 else <Py_ssize_t>cap


cdef class RingBuffer:
    """The most recent bytes of a stream, addressed by absolute position.

    ``RingBuffer(capacity)`` is a fixed ring (``capacity <= 0``: 16 MiB);
    ``RingBuffer.adaptive(min_capacity, max_capacity)`` one whose capacity
    moves between the two bounds.
    """

    def __cinit__(self, capacity=0):
        capacity = _capacity(capacity, _DEFAULT_CAP)
        self._buf = NULL
        self._size = 0
        self._start = 0
        self._len = 0
        self._head = 0
        self._cap = capacity
        self._min = capacity
        self._max = capacity

    def __dealloc__(self):
        PyMem_Free(self._buf)
        self._buf = NULL

    @classmethod
    def adaptive(cls, min_capacity=0, max_capacity=0):
        """An adaptive ring; ``<= 0`` picks 64 KiB / 16 MiB, and min is clamped to max."""
        cdef Py_ssize_t lo = _capacity(min_capacity, _DEFAULT_MIN_CAP)
        cdef Py_ssize_t hi = _capacity(max_capacity, _DEFAULT_CAP)
        if lo > hi:
            lo = hi
        cdef RingBuffer ring = cls(lo)
        ring._max = hi
        return ring

    def __reduce_ex__(self, protocol):
        """Refuse pickling and copying (TypeError), as the pure twin does."""
        raise not_copyable()

    @property
    def head(self):
        """Total bytes ever written (the position after the newest byte)."""
        return self._head

    @property
    def tail(self):
        """Position of the oldest byte still held (``head - len(self)``)."""
        return self._head - self._len

    @property
    def capacity(self):
        """The current capacity (most bytes held)."""
        return self._cap

    @property
    def min_capacity(self):
        """The lowest capacity an adaptive ring shrinks to."""
        return self._min

    @property
    def max_capacity(self):
        """The highest capacity an adaptive ring grows to."""
        return self._max

    def __len__(self):
        return self._len

    def __repr__(self):
        return (
            f"<RingBuffer tail={self._head - self._len} head={self._head} len={self._len} "
            f"cap={self._cap} min={self._min} max={self._max}>"
        )

    def write(self, data):
        """Append ``data`` (any C-contiguous bytes-like object); return its length.

        Never fails for lack of room: the oldest bytes are evicted instead.
        Raises ``TypeError`` for a non-buffer and ``BufferError`` for a
        non-contiguous one.
        """
        cdef Py_buffer view
        cdef Py_ssize_t n
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except BufferError:
            # refused as one flat block: decide as the pure twin does, through
            # a memoryview (non-contiguous: its BufferError; else copy it flat)
            with memoryview(data) as raw:
                if not raw.c_contiguous:
                    raise not_contiguous() from None
                data = raw.tobytes()
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            n = view.len
            self._write(<const unsigned char*>view.buf, n)
        finally:
            PyBuffer_Release(&view)
        return n

    cdef int _write(self, const unsigned char* data, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap, length, drop, end, first
        self._head += n
        if n == 0:
            return 0
        cap = self._cap
        length = self._len
        if self._max > cap and length + n > cap:
            # 2 * cap cannot overflow: it is only taken when below max (a ssize_t)
            cap = _min(_max(2 * cap if cap <= self._max // 2 else self._max, length + n),
                       self._max)
            self._cap = cap
        if n >= cap:
            if self._size != cap:
                PyMem_Free(self._buf)
                self._buf = NULL
                self._size = 0
                self._start = 0
                self._len = 0
                self._buf = <unsigned char*>PyMem_Malloc(cap)
                if self._buf == NULL:
                    raise MemoryError()
                self._size = cap
            memcpy(self._buf, data + (n - cap), cap)
            self._start = 0
            self._len = cap
            return 0
        if length + n > cap:
            drop = length + n - cap
            self._start = (self._start + drop) % self._size
            length -= drop
            self._len = length
        if length + n > self._size:
            self._resize(_min(cap, _max(_max(2 * self._size, length + n), MIN_ALLOC)))
        end = self._start + length
        if end >= self._size:
            end -= self._size
        first = self._size - end
        if first >= n:
            memcpy(self._buf + end, data, n)
        else:
            memcpy(self._buf + end, data, first)
            memcpy(self._buf, data + first, n - first)
        self._len = length + n
        return 0

    def bytes_from(self, pos):
        """A copy of the bytes at positions ``[pos, head)``; empty if ``pos >= head``.

        Raises ``PositionEvicted`` when ``pos < tail``: those bytes are gone.
        """
        cdef int overflow = 0
        cdef long long p = _position(pos, &overflow)
        cdef long long tail = self._head - self._len
        cdef Py_ssize_t count, off, first
        cdef bytes out
        cdef char* dst
        if overflow < 0 or (overflow == 0 and p < tail):
            raise PositionEvicted(
                f"resume: position {PyNumber_Index(pos)} evicted from ring (tail {tail})"
            )
        if overflow > 0 or p >= self._head:
            return b""
        count = <Py_ssize_t>(self._head - p)
        off = self._start + <Py_ssize_t>(p - tail)
        if off >= self._size:
            off -= self._size
        out = PyBytes_FromStringAndSize(NULL, count)
        dst = PyBytes_AS_STRING(out)
        first = self._size - off
        if first >= count:
            memcpy(dst, self._buf + off, count)
        else:
            memcpy(dst, self._buf + off, first)
            memcpy(dst + first, self._buf, count - first)
        return out

    def discard(self, before):
        """Release the bytes at positions below ``before`` (the peer has them).

        A no-op when ``before <= tail``; empties the ring when
        ``before >= head``. After an effective release an adaptive ring that
        is less than a quarter full halves its capacity once (not below
        ``min_capacity`` nor the bytes it holds).
        """
        cdef int overflow = 0
        cdef long long b = _position(before, &overflow)
        cdef long long tail = self._head - self._len
        cdef Py_ssize_t drop, cap, new_cap
        if overflow < 0 or (overflow == 0 and b <= tail):
            return
        if overflow > 0 or b >= self._head:
            self._start = 0
            self._len = 0
        else:
            drop = <Py_ssize_t>(b - tail)
            self._start = (self._start + drop) % self._size
            self._len -= drop
        cap = self._cap
        if cap > self._min and 4 * self._len < cap:
            new_cap = _max(_max(cap // 2, self._min), self._len)
            if new_cap < cap:
                self._cap = new_cap
                if self._size > new_cap:
                    self._resize(new_cap)

    cdef int _resize(self, Py_ssize_t size) except -1:
        """Move the resident bytes to the front of new storage of ``size`` bytes."""
        cdef unsigned char* new = <unsigned char*>PyMem_Malloc(size)
        cdef Py_ssize_t first
        if new == NULL:
            raise MemoryError()
        if self._len:
            first = _min(self._len, self._size - self._start)
            memcpy(new, self._buf + self._start, first)
            if first < self._len:
                memcpy(new + first, self._buf, self._len - first)
        PyMem_Free(self._buf)
        self._buf = new
        self._size = size
        self._start = 0
        return 0
