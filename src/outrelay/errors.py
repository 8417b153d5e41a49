"""The root of every exception OutRelay raises on purpose.

Protocol errors that map to a STREAM_REJECT carry that code as the class
attribute ``code``; they are turned into frames at exactly one boundary.
"""


class OutRelayError(Exception):
    """Base class of all OutRelay errors."""

    #: STREAM_REJECT code this error maps to on the wire (0: not a reject).
    code: int = 0
