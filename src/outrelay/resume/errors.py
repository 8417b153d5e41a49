"""Resume errors, shared by the compiled and the pure ring buffer."""

from outrelay.errors import OutRelayError


class ResumeError(OutRelayError):
    """Base class of stream-resume errors."""


class PositionEvicted(ResumeError):
    """The requested position has already left the ring: the gap cannot be re-sent."""
