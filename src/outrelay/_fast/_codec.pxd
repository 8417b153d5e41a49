# cython: language_level=3
"""Layouts of the compiled ORP codec's classes (see _codec.pyx)."""


cdef class Frame:
    cdef readonly int type
    cdef readonly object payload
    cdef readonly int flags
    cdef readonly int version


cdef class FrameDecoder:
    # The one partial frame: header bytes first, then a payload bytes object
    # allocated at its declared length once the header is in, filled in place.
    cdef unsigned char _hdr[8]
    cdef Py_ssize_t _hdr_len
    cdef object _payload
    cdef Py_ssize_t _length
    cdef Py_ssize_t _got
    cdef int _type
    cdef int _flags
    cdef object _error

    cdef list _run(self, const unsigned char* p, Py_ssize_t n)
    cdef int _start(self) except -1
    cdef void _reset(self) noexcept
