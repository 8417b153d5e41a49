# cython: language_level=3
"""Layout of the compiled resume ring buffer (see _ring.pyx)."""


cdef class RingBuffer:
    # circular storage of _size bytes; resident bytes start at _start and wrap
    cdef unsigned char* _buf
    cdef Py_ssize_t _size
    cdef Py_ssize_t _start
    cdef Py_ssize_t _len
    # _head: total bytes ever written; _cap/_min/_max: current and bounding capacities
    cdef long long _head
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _min
    cdef Py_ssize_t _max

    cdef int _write(self, const unsigned char* data, Py_ssize_t n) except -1
    cdef int _resize(self, Py_ssize_t size) except -1
