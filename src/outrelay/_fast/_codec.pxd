# cython: language_level=3
"""Layouts of the compiled ORP codec's classes (see _codec.pyx)."""

from libc.stdint cimport uint32_t


cdef class Frame:
    cdef readonly int type
    cdef readonly object payload
    cdef readonly int flags
    cdef readonly int version


cdef class FrameDecoder:
    # The one partial frame: header bytes first, then a payload bytes object
    # (None until payload bytes arrive) grown with them up to its declared length.
    cdef unsigned char _hdr[8]
    cdef Py_ssize_t _hdr_len
    cdef object _payload
    cdef Py_ssize_t _length
    cdef Py_ssize_t _got
    cdef int _type
    cdef int _flags
    cdef object _error
    cdef uint32_t _max

    cdef list _run(self, const unsigned char* p, Py_ssize_t n)
    cdef int _start(self) except -1
    cdef int _fill(self, const unsigned char* p, Py_ssize_t take) except -1
    cdef int _resize(self, Py_ssize_t size) except -1
    cdef object _done(self)
    cdef void _reset(self) noexcept
