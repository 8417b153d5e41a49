"""Resume errors, shared by the compiled and the pure ring buffer.

Besides the error classes, the builders of the few built-in exceptions the
ring raises on bad arguments live here, so both twins raise them with the
same words.
"""

import sys

from outrelay.errors import OutRelayError


class ResumeError(OutRelayError):
    """Base class of stream-resume errors."""


class PositionEvicted(ResumeError):
    """The requested position has already left the ring: the gap cannot be re-sent."""


def bad_capacity(cap: int) -> OverflowError:
    """A ring capacity (or bound) that does not fit in a C ``Py_ssize_t``."""
    return OverflowError(f"ring: capacity {cap} out of range ({-sys.maxsize - 1}..{sys.maxsize})")


def not_contiguous() -> BufferError:
    """``write`` got a buffer whose bytes are not one C-contiguous block."""
    return BufferError("ring: data must be a C-contiguous buffer")


def not_copyable() -> TypeError:
    """A ring holds a live stream's unacknowledged bytes: it is not pickled or copied."""
    return TypeError("ring: a RingBuffer cannot be pickled or copied")
