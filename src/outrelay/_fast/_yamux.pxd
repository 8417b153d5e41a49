# cython: language_level=3
"""Layouts of the compiled yamux session's classes (see _yamux.pyx)."""

from libc.stdint cimport int64_t, uint32_t


cdef class _Stream:
    # flags are unsigned char (0/1), not bint, to keep an idle stream small
    cdef uint32_t id
    cdef object key              # id as a Python int, made once for the table and events
    # send side
    cdef int64_t send_window     # bytes the peer lets us send
    cdef list queue              # over-window bytes chunks; sent from queue[q_head][q_off:]
    cdef Py_ssize_t q_head
    cdef Py_ssize_t q_off
    cdef int64_t queued          # bytes in queue
    cdef unsigned char fin_queued         # FIN asked for (sent once the queue is empty)
    cdef unsigned char send_done          # FIN framed or RST: nothing more goes out
    cdef unsigned char hello       # SYN or ACK still to put on our first frame (0: done)
    cdef int64_t extra           # receive window above 256 KiB still to announce
    cdef int64_t drained         # bytes framed, not yet reported
    cdef unsigned char in_drained         # listed in the session's report order
    # receive side
    cdef int64_t recv_window     # bytes the peer may still send
    cdef int64_t unconsumed      # delivered, not yet granted back
    cdef int64_t pending         # granted, not yet announced in a WindowUpdate
    cdef unsigned char recv_done          # FIN or RST seen: nothing more arrives
    cdef unsigned char released           # the application reads no more
    cdef unsigned char ours               # we opened it


cdef class YamuxSession:
    # as instances of the pure twin: weak references and extra attributes work
    cdef dict __dict__
    cdef object __weakref__
    cdef public bint client
    cdef public int64_t window
    cdef public Py_ssize_t max_streams
    cdef public Py_ssize_t peer_max_streams
    cdef public object reset_code
    cdef public object pong
    cdef int64_t _half
    cdef int64_t _extra
    cdef dict _streams
    cdef _Stream _last           # the stream of the last frame (a cache of the table)
    cdef int64_t _next_id
    cdef unsigned int _peer_parity
    cdef int64_t _peer_max
    cdef set _gaps
    cdef Py_ssize_t _ours
    cdef Py_ssize_t _theirs
    cdef list _hello
    cdef list _events            # events[_ev_head:] are pending
    cdef Py_ssize_t _ev_head
    cdef list _drained           # streams with bytes framed and not reported, in order
    cdef bint _closed
    # receive parser: a cut header, and the rest of a Data payload
    cdef unsigned char _hdr[12]
    cdef Py_ssize_t _hdr_len
    cdef int64_t _left
    cdef uint32_t _rx_id
    cdef _Stream _rx
    cdef bint _rx_fin
    # output: header bytes in _hbuf, payload segments (object, offset, length)
    # spliced in at recorded header positions; joined once by data_to_send
    cdef unsigned char* _hbuf
    cdef Py_ssize_t _hlen
    cdef Py_ssize_t _hcap
    cdef list _objs
    cdef Py_ssize_t* _seg
    cdef Py_ssize_t _nseg
    cdef Py_ssize_t _segcap
    cdef Py_ssize_t _ptotal

    cdef int _feed(self, const unsigned char* p, Py_ssize_t n, object whole) except -1
    cdef Py_ssize_t _header(self, const unsigned char* h, const unsigned char* p,
                            Py_ssize_t pos, Py_ssize_t n, object whole) except -1
    cdef Py_ssize_t _payload(self, const unsigned char* p, Py_ssize_t pos, Py_ssize_t n,
                             object whole) except -1
    cdef _Stream _lookup(self, uint32_t sid)
    cdef _Stream _unknown(self, uint32_t sid, unsigned int flags)
    cdef unsigned int _greet(self, uint32_t sid, _Stream s) except? 0xFFFF
    cdef int _flush_hello(self) except -1
    cdef int _window_update(self, uint32_t sid, _Stream s, int64_t delta) except -1
    cdef int _push(self, uint32_t sid, _Stream s) except -1
    cdef int _add_drained(self, _Stream s, int64_t n) except -1
    cdef int _peer_fin(self, uint32_t sid, _Stream s, object chunk) except -1
    cdef int _peer_reset(self, uint32_t sid, _Stream s) except -1
    cdef int _forget(self, uint32_t sid, _Stream s) except -1
    cdef int _report(self) except -1
    cdef int _fail(self, object exc) except -1
    cdef int _finish(self, object code, str reason, bint by_us) except -1
    cdef int _emit(self, unsigned int ftype, unsigned int flags, uint32_t sid,
                   uint32_t length) except -1
    cdef int _emit_payload(self, object obj, Py_ssize_t off, Py_ssize_t length) except -1
    cdef void _clear_out(self) noexcept
