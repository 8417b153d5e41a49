"""Resume ring buffer, pure-Python twin of ``outrelay._fast._ring`` (wire.md 6.2).

How this works: the ring keeps the most recent bytes written to a stream,
addressed by absolute position (bytes since stream start). ``head`` counts
every byte ever written, ``tail = head - len(ring)`` is the oldest byte still
held, and ``cap`` bounds ``len(ring)``. An adaptive ring doubles ``cap``
(up to ``max_capacity``) when a write would overflow it and halves it (down
to ``min_capacity``) at most once per effective ``discard`` while it is less
than a quarter full; a fixed ring has ``min_capacity == max_capacity``.

Storage is one circular ``bytearray`` holding the resident bytes from index
``_start`` onward, wrapping at its end. It is allocated lazily and grows
geometrically, so an idle 16 MiB ring costs nothing; it never exceeds the
current ``cap`` and is reallocated down when ``cap`` shrinks.

A lock makes each call atomic (one writer and many readers may share a
ring across threads); the compiled twin gets the same from the GIL.
"""

from __future__ import annotations

import operator
import sys
import threading
from typing import TYPE_CHECKING, NoReturn, SupportsIndex

from outrelay.resume.errors import PositionEvicted, bad_capacity, not_contiguous, not_copyable

if TYPE_CHECKING:
    from typing_extensions import Buffer

#: Capacity of a fixed ring, and the default maximum of an adaptive one.
DEFAULT_RING_CAPACITY = 16 * 1024 * 1024
#: Default minimum (and starting) capacity of an adaptive ring.
DEFAULT_MIN_RING_CAPACITY = 64 * 1024
#: Smallest storage allocation (bytes); storage never exceeds the capacity.
_MIN_ALLOC = 4096


def _capacity(value: SupportsIndex, default: int) -> int:
    cap = operator.index(value)
    if not -sys.maxsize - 1 <= cap <= sys.maxsize:
        raise bad_capacity(cap)
    return default if cap <= 0 else cap


#: What memoryview() puts before the buffer protocol's own TypeError message.
_MEMORYVIEW_PREFIX = "memoryview: "


class RingBuffer:
    """The most recent bytes of a stream, addressed by absolute position.

    ``RingBuffer(capacity)`` is a fixed ring (``capacity <= 0``: 16 MiB);
    ``RingBuffer.adaptive(min_capacity, max_capacity)`` one whose capacity
    moves between the two bounds.
    """

    __slots__ = ("_buf", "_start", "_len", "_head", "_cap", "_min", "_max", "_lock")

    def __init__(self, capacity: SupportsIndex = 0) -> None:
        cap = _capacity(capacity, DEFAULT_RING_CAPACITY)
        self._buf = bytearray()
        self._start = 0
        self._len = 0
        self._head = 0
        self._cap = cap
        self._min = cap
        self._max = cap
        self._lock = threading.Lock()

    @classmethod
    def adaptive(
        cls, min_capacity: SupportsIndex = 0, max_capacity: SupportsIndex = 0
    ) -> RingBuffer:
        """An adaptive ring; ``<= 0`` picks 64 KiB / 16 MiB, and min is clamped to max."""
        lo = _capacity(min_capacity, DEFAULT_MIN_RING_CAPACITY)
        hi = _capacity(max_capacity, DEFAULT_RING_CAPACITY)
        lo = min(lo, hi)
        ring = cls(lo)
        ring._max = hi
        return ring

    @property
    def head(self) -> int:
        """Total bytes ever written (the position after the newest byte)."""
        return self._head

    @property
    def tail(self) -> int:
        """Position of the oldest byte still held (``head - len(self)``)."""
        with self._lock:
            return self._head - self._len

    @property
    def capacity(self) -> int:
        """The current capacity (most bytes held)."""
        return self._cap

    @property
    def min_capacity(self) -> int:
        """The lowest capacity an adaptive ring shrinks to."""
        return self._min

    @property
    def max_capacity(self) -> int:
        """The highest capacity an adaptive ring grows to."""
        return self._max

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (
            f"<RingBuffer tail={self.tail} head={self._head} len={self._len} "
            f"cap={self._cap} min={self._min} max={self._max}>"
        )

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        """Refuse pickling and copying (TypeError), as the compiled twin does."""
        raise not_copyable()

    def write(self, data: Buffer) -> int:
        """Append ``data`` (any C-contiguous bytes-like object); return its length.

        Never fails for lack of room: the oldest bytes are evicted instead.
        Raises ``TypeError`` for a non-buffer and ``BufferError`` for a
        non-contiguous one.
        """
        try:
            view = memoryview(data)
        except TypeError as exc:
            # the buffer protocol's own words, as the compiled twin reports them
            raise TypeError(str(exc).removeprefix(_MEMORYVIEW_PREFIX)) from None
        with view as raw:
            if not raw.c_contiguous:
                raise not_contiguous()
            if raw.ndim == 1 and raw.itemsize == 1:
                return self._write(raw)
            with raw.cast("B") as flat:
                return self._write(flat)

    def _write(self, mv: memoryview) -> int:
        n = len(mv)
        with self._lock:
            self._head += n
            if n == 0:
                return 0
            cap = self._cap
            length = self._len
            if self._max > cap and length + n > cap:
                cap = self._cap = min(max(2 * cap, length + n), self._max)
            if n >= cap:
                if len(self._buf) != cap:
                    self._buf = bytearray(cap)
                self._buf[:] = mv[n - cap :]
                self._start = 0
                self._len = cap
                return n
            if length + n > cap:
                drop = length + n - cap
                self._start = (self._start + drop) % len(self._buf)
                length -= drop
            size = len(self._buf)
            if length + n > size:
                self._resize(min(cap, max(2 * size, length + n, _MIN_ALLOC)), length)
                size = len(self._buf)
            end = self._start + length
            if end >= size:
                end -= size
            first = size - end
            if first >= n:
                self._buf[end : end + n] = mv
            else:
                self._buf[end:] = mv[:first]
                self._buf[: n - first] = mv[first:]
            self._len = length + n
            return n

    def bytes_from(self, pos: SupportsIndex) -> bytes:
        """A copy of the bytes at positions ``[pos, head)``; empty if ``pos >= head``.

        Raises ``PositionEvicted`` when ``pos < tail``: those bytes are gone.
        """
        pos = operator.index(pos)
        with self._lock:
            tail = self._head - self._len
            if pos < tail:
                raise PositionEvicted(f"resume: position {pos} evicted from ring (tail {tail})")
            if pos >= self._head:
                return b""
            count = self._head - pos
            size = len(self._buf)
            off = self._start + (pos - tail)
            if off >= size:
                off -= size
            view = memoryview(self._buf)
            try:
                if off + count <= size:
                    return bytes(view[off : off + count])
                return b"".join((view[off:], view[: off + count - size]))
            finally:
                view.release()

    def discard(self, before: SupportsIndex) -> None:
        """Release the bytes at positions below ``before`` (the peer has them).

        A no-op when ``before <= tail``; empties the ring when
        ``before >= head``. After an effective release an adaptive ring that
        is less than a quarter full halves its capacity once (not below
        ``min_capacity`` nor the bytes it holds).
        """
        before = operator.index(before)
        with self._lock:
            tail = self._head - self._len
            if before <= tail:
                return
            if before >= self._head:
                self._start = 0
                self._len = 0
            else:
                drop = before - tail
                self._start = (self._start + drop) % len(self._buf)
                self._len -= drop
            cap = self._cap
            if cap > self._min and 4 * self._len < cap:
                new_cap = max(cap // 2, self._min, self._len)
                if new_cap < cap:
                    self._cap = new_cap
                    if len(self._buf) > new_cap:
                        self._resize(new_cap, self._len)

    def _resize(self, size: int, length: int) -> None:
        """Move the ``length`` resident bytes to the front of new storage of ``size``."""
        new = bytearray(size)
        start = self._start
        with memoryview(self._buf) as old:
            first = min(length, len(old) - start)
            new[:first] = old[start : start + first]
            if first < length:
                new[first:length] = old[: length - first]
        self._buf = new
        self._start = 0
