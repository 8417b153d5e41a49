"""Stream resume: the ring buffer of sent bytes, stream ids, and constants.

The ring buffer exists twice, compiled (``outrelay._fast._ring``) and pure
Python (``_ring_py``), with identical behaviour; the compiled one is used
when built. ``IMPLEMENTATION`` says which one is active.
"""

from outrelay._compat import select
from outrelay.resume import _ring_py
from outrelay.resume._ring_py import DEFAULT_MIN_RING_CAPACITY, DEFAULT_RING_CAPACITY
from outrelay.resume.errors import PositionEvicted, ResumeError
from outrelay.resume.ids import (
    InvalidStreamId,
    format_stream_id,
    new_stream_id,
    parse_stream_id,
)

_ring, IMPLEMENTATION = select("outrelay._fast._ring", _ring_py)

RingBuffer = _ring.RingBuffer

#: Each agent checkpoints every active resumable stream this often (ms).
CHECKPOINT_PERIOD_MS = 100
#: How long the relay keeps a broken stream waiting for its resume (s).
RESUME_WINDOW_S = 30

__all__ = [
    "CHECKPOINT_PERIOD_MS",
    "DEFAULT_MIN_RING_CAPACITY",
    "DEFAULT_RING_CAPACITY",
    "IMPLEMENTATION",
    "RESUME_WINDOW_S",
    "InvalidStreamId",
    "PositionEvicted",
    "ResumeError",
    "RingBuffer",
    "format_stream_id",
    "new_stream_id",
    "parse_stream_id",
]
