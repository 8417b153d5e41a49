# cython: language_level=3
"""Layout of the compiled stream FSM (see _fsm.pyx)."""


cdef class StreamFSM:
    cdef int _state
