# cython: language_level=3
"""Layouts of the compiled yamux session's classes (see _yamux.pyx)."""

from libc.stdint cimport int64_t, uint32_t


cdef class _Stream:
    cdef uint32_t id
    # send side: the peer's window for us, and what waits for it
    cdef int64_t send_window
    cdef list queue            # bytes chunks, sent from queue[q_head][q_off:]
    cdef Py_ssize_t q_head
    cdef Py_ssize_t q_off
    cdef int64_t buffered      # queued bytes not yet written out
    cdef int64_t reported      # buffered at the last SendCapacityAvailable
    cdef bint fin_queued
    cdef bint fin_sent
    cdef bint need_syn
    cdef bint need_ack
    cdef bint in_ready
    cdef bint local_reset
    # receive side, in bytes
    cdef int64_t recv_window   # what the peer may still send
    cdef int64_t unconsumed    # delivered, not yet granted back
    cdef int64_t to_update     # granted, not yet announced by a WindowUpdate
    cdef bint fin_recv
    cdef bint remote_reset
    cdef bint released


cdef class YamuxSession:
    cdef bint _client
    cdef uint32_t _next_id
    cdef int64_t _window
    cdef Py_ssize_t _max_streams
    cdef dict _streams
    cdef list _ready           # streams with something to write, in order
    cdef bytearray _ctrl       # control frames written before the next data
    cdef object _events        # collections.deque of events
    cdef bint _closed
    cdef bint _goaway_sent
    cdef bint _goaway_recv
    # one partial frame of the input: its header, then its payload so far
    cdef unsigned char _hdr[12]
    cdef Py_ssize_t _hdr_len
    cdef object _partial       # bytes of the declared length, filled in place
    cdef uint32_t _plen

    cdef int _feed(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _start_partial(self) except -1
    cdef bint _check(self, const unsigned char* q) except -1
    cdef int _frame(self, const unsigned char* q, const unsigned char* payload,
                    object whole) except -1
    cdef int _window_update(self, _Stream s, uint32_t delta) except -1
    cdef int64_t _over_window(self, _Stream s) noexcept
    cdef int64_t _sendable(self, _Stream s) noexcept
    cdef int _copy_out(self, _Stream s, unsigned char* dst, int64_t take) except -1
    cdef int _check_open(self) except -1
    cdef _Stream _stream_for_send(self, object stream_id)
    cdef int _maybe_update(self, _Stream s) except -1
    cdef int _drop_queue(self, _Stream s) except -1
    cdef int _forget_if_done(self, _Stream s) except -1
    cdef int _protocol_error(self, str reason) except -1
    cdef int _finish(self, long long code, str reason, bint by_us) except -1
