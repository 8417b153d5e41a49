"""The root of every exception OutRelay raises on purpose.

Protocol errors that map to a STREAM_REJECT carry that code as the class
attribute ``code``; they are turned into frames at exactly one boundary.

``InputError`` marks a mistake in what the user gave (a flag value, a file,
an address, a spec): the CLI exits 2 for it and 1 for every other
``OutRelayError`` (``outrelay.cli.errors``).
"""


class OutRelayError(Exception):
    """Base class of all OutRelay errors."""

    #: STREAM_REJECT code this error maps to on the wire (0: not a reject).
    code: int = 0


class InputError(OutRelayError, ValueError):
    """A flag value, file, address or spec given by the user cannot work (CLI exit 2)."""
