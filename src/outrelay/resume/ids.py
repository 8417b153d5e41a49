"""Stream ids (wire.md 6.1): unique non-zero 64-bit numbers, 16 hex digits as text.

How this works: a per-process counter (1, 2, 3, ...) goes through a keyed
64-bit permutation, a four-round Feistel network whose round function is
keyed BLAKE2b. A permutation cannot map two counters to one id, so ids are
distinct within a process for 2**64 calls, and the random per-process key
makes them unpredictable and unrelated across processes (collisions between
processes stay at the birthday bound of random 64-bit values). The key and
counter are redrawn in a forked child so parent and child never share ids.
Id 0 means "no id" to the relay and is skipped.
"""

from __future__ import annotations

import hashlib
import operator
import os
import secrets
import threading
from typing import SupportsIndex

from outrelay.resume.errors import ResumeError

_MASK32 = 0xFFFFFFFF
_MAX_ID = (1 << 64) - 1
_HEX_DIGITS = frozenset("0123456789abcdef")


class InvalidStreamId(ResumeError, ValueError):
    """A stream id is not 16 lowercase hex digits, or not an unsigned 64-bit value."""


class _Generator:
    __slots__ = ("_keys", "_counter", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reseed()

    def _reseed(self) -> None:
        self._keys = [secrets.token_bytes(32) for _ in range(4)]
        self._counter = 0

    def _round(self, key: bytes, half: int) -> int:
        digest = hashlib.blake2b(half.to_bytes(4, "little"), digest_size=4, key=key).digest()
        return int.from_bytes(digest, "little")

    def _permute(self, value: int) -> int:
        left, right = value >> 32, value & _MASK32
        for key in self._keys:
            left, right = right, left ^ self._round(key, right)
        return (left << 32) | right

    def next(self) -> int:
        while True:
            with self._lock:
                self._counter += 1
                value = self._permute(self._counter & _MAX_ID)
            if value:
                return value


_GENERATOR = _Generator()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_GENERATOR._reseed)


def new_stream_id() -> int:
    """A fresh stream id: non-zero, unsigned 64-bit, never repeated in this process.

    Thread-safe.
    """
    return _GENERATOR.next()


def format_stream_id(stream_id: SupportsIndex) -> str:
    """The text form of ``stream_id``: exactly 16 lowercase hex digits.

    Raises ``InvalidStreamId`` when the value is not an unsigned 64-bit
    integer, ``TypeError`` when it is not an integer at all.
    """
    value = operator.index(stream_id)
    if not 0 <= value <= _MAX_ID:
        raise InvalidStreamId(f"resume: stream id {value} is not an unsigned 64-bit integer")
    return f"{value:016x}"


def parse_stream_id(text: str) -> int:
    """The stream id written as ``text`` (16 lowercase hex digits, as ``format_stream_id``).

    Raises ``InvalidStreamId`` on anything else (wrong length, upper case,
    prefixes, signs, spaces), ``TypeError`` when ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"stream id text must be str, not {type(text).__name__}")
    if len(text) != 16 or not _HEX_DIGITS.issuperset(text):
        raise InvalidStreamId(f"resume: invalid stream id {text!r}: want 16 lowercase hex digits")
    return int(text, 16)
