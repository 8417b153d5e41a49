"""ORP frame codec, pure-Python twin of ``outrelay._fast._codec``.

How this works: a frame is an 8-byte big-endian header (wire.md 2)

    word0 = version << 13 | reserved << 11 | type   (16 bits)
    flags                                           (16 bits)
    length                                          (32 bits)

followed by ``length`` payload bytes. ``encode_header``/``decode_header``
handle one header; ``FrameDecoder`` is a sans-IO stream decoder that takes
bytes in any split and gives whole ``Frame`` objects out.

Unlike the reference, decoding a version other than 1 is an error
(InvalidVersion). Both twins raise the same exception classes with the same
messages; integer arguments follow ``operator.index`` (a float is a
TypeError) and bytes-like arguments are read through the buffer protocol.
"""

from __future__ import annotations

import struct
from operator import index
from typing import NoReturn, SupportsIndex, final

from outrelay.orp.errors import (
    FrameTooLarge,
    InvalidFlags,
    InvalidType,
    InvalidVersion,
    OrpError,
    PayloadTooLarge,
    ShortHeader,
    TruncatedFrame,
    not_copyable,
)
from outrelay.orp.types import HEADER_SIZE, MAX_PAYLOAD, MAX_TYPE, VERSION, FrameType

__all__ = ["Frame", "FrameDecoder", "decode_header", "encode_frame", "encode_header"]

_HEADER = struct.Struct(">HHI")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_VERSION_BITS = VERSION << 13
_MAX_FLAGS = 0xFFFF
_MAX_VERSION = 7
#: Longest payload shown in full by Frame.__repr__.
_REPR_PAYLOAD = 32


def _type_label(ftype: int) -> str:
    """``"HELLO (0x001)"`` for a known type, ``"0x7ff"`` for an unknown one."""
    try:
        return f"{FrameType(ftype).name} ({ftype:#05x})"
    except ValueError:
        return f"{ftype:#05x}"


# Error constructors, shared in spirit (and in exact wording) with the .pyx.


def _bad_type(ftype: int) -> InvalidType:
    return InvalidType(f"orp: frame type {ftype} out of range (0..{MAX_TYPE:#x})")


def _bad_flags(flags: int) -> InvalidFlags:
    return InvalidFlags(f"orp: flags {flags} out of range (0..{_MAX_FLAGS:#x})")


def _bad_length(length: int) -> OrpError | ValueError:
    if length < 0:
        return ValueError(f"orp: payload length {length} is negative")
    return _too_large(length, MAX_PAYLOAD)


def _bad_version(version: int) -> InvalidVersion:
    return InvalidVersion(f"orp: unsupported version {version} (want {VERSION})")


def _too_large(length: int, limit: int) -> PayloadTooLarge:
    """What a decoder whose limit is ``limit`` raises for a declared ``length`` over it."""
    if limit == MAX_PAYLOAD:
        return PayloadTooLarge(f"orp: payload length {length} exceeds MAX_PAYLOAD ({MAX_PAYLOAD})")
    return FrameTooLarge(
        f"orp: frame header declares {length} payload bytes, over the limit of {limit}"
    )


def _bad_limit(limit: int) -> ValueError:
    return ValueError(f"orp: max_payload {limit} out of range (0..{MAX_PAYLOAD})")


@final
class Frame:
    """One decoded (or to-be-encoded) ORP frame; immutable and hashable.

    ``type`` is a plain int (it compares equal to ``FrameType`` members),
    ``payload`` is ``bytes`` (``b""`` when empty). Frames of the two twins
    compare equal when their four fields do.

    Raises InvalidType, InvalidFlags, InvalidVersion (version outside 0..7),
    PayloadTooLarge or TypeError (non-integer field, payload not bytes-like).
    """

    __slots__ = ("_type", "_payload", "_flags", "_version")

    def __init__(
        self, type: int, payload: bytes = b"", flags: int = 0, version: int = VERSION
    ) -> None:
        ftype = type if type.__class__ is int else index(type)
        if flags.__class__ is not int:
            flags = index(flags)
        if version.__class__ is not int:
            version = index(version)
        if not isinstance(payload, bytes):
            payload = bytes(memoryview(payload))
        if not 0 <= ftype <= MAX_TYPE:
            raise _bad_type(ftype)
        if len(payload) > MAX_PAYLOAD:
            raise _bad_length(len(payload))
        if not 0 <= flags <= _MAX_FLAGS:
            raise _bad_flags(flags)
        if not 0 <= version <= _MAX_VERSION:
            raise InvalidVersion(f"orp: version {version} out of range (0..{_MAX_VERSION})")
        self._type = ftype
        self._payload = payload
        self._flags = flags
        self._version = version

    @property
    def type(self) -> int:
        """The 11-bit frame type."""
        return self._type

    @property
    def payload(self) -> bytes:
        """The payload bytes (usually a protobuf message)."""
        return self._payload

    @property
    def flags(self) -> int:
        """The opaque 16-bit flags, carried verbatim."""
        return self._flags

    @property
    def version(self) -> int:
        """The protocol version of the header (always 1 once decoded)."""
        return self._version

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):  # exact class: Frame is final
            # The compiled Frame knows how to compare itself with this one.
            return NotImplemented
        return (
            self._type == other._type
            and self._flags == other._flags
            and self._version == other._version
            and self._payload == other._payload
        )

    def __hash__(self) -> int:
        return hash((self._type, self._payload, self._flags, self._version))

    def __repr__(self) -> str:
        payload = self._payload
        shown = repr(payload)
        if len(payload) > _REPR_PAYLOAD:
            shown = f"{payload[:_REPR_PAYLOAD]!r}...({len(payload)} bytes)"
        return (
            f"Frame(type={_type_label(self._type)}, payload={shown}, "
            f"flags={self._flags:#06x}, version={self._version})"
        )


def encode_header(ftype: int, length: int, flags: int = 0) -> bytes:
    """Return the 8-byte header for a frame (version 1, reserved bits 0).

    Raises InvalidType (type outside 0..0x7FF), PayloadTooLarge (length over
    MAX_PAYLOAD), ValueError (negative length), InvalidFlags (flags outside
    0..0xFFFF), TypeError (an argument is not an integer).
    """
    if ftype.__class__ is not int:
        ftype = index(ftype)
    if length.__class__ is not int:
        length = index(length)
    if flags.__class__ is not int:
        flags = index(flags)
    if not 0 <= ftype <= MAX_TYPE:
        raise _bad_type(ftype)
    if not 0 <= length <= MAX_PAYLOAD:
        raise _bad_length(length)
    if not 0 <= flags <= _MAX_FLAGS:
        raise _bad_flags(flags)
    return _pack_header(_VERSION_BITS | ftype, flags, length)


def decode_header(buf: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
    """Parse the first 8 bytes of ``buf`` into ``(version, type, flags, length)``.

    Reserved bits are ignored. Raises ShortHeader (fewer than 8 bytes),
    InvalidVersion (version other than 1), PayloadTooLarge (declared length
    over MAX_PAYLOAD), TypeError (not bytes-like).
    """
    try:
        word0, flags, length = _unpack_header(buf)
    except struct.error:
        raise ShortHeader(
            f"orp: short header: {memoryview(buf).nbytes} bytes, need {HEADER_SIZE}"
        ) from None
    version = word0 >> 13
    if version != VERSION:
        raise _bad_version(version)
    if length > MAX_PAYLOAD:
        raise _bad_length(length)
    return version, word0 & MAX_TYPE, flags, length


def encode_frame(
    ftype: int, payload: bytes | bytearray | memoryview = b"", flags: int = 0
) -> bytes:
    """Return header and payload as one contiguous ``bytes`` object.

    Raises like ``encode_header``, and TypeError if payload is not bytes-like.
    """
    if not isinstance(payload, bytes | bytearray):
        payload = bytes(memoryview(payload))
    return encode_header(ftype, len(payload), flags) + payload


class FrameDecoder:
    """Sans-IO ORP stream decoder: ``feed`` bytes in any split, get frames out.

    ``max_payload`` is the largest payload a frame may declare (MAX_PAYLOAD
    by default; control streams use MAX_CONTROL_PAYLOAD). A declared length
    over it is rejected as soon as its 8 header bytes are in, before any
    payload: PayloadTooLarge with the default limit, FrameTooLarge (which
    closes the connection) with a lower one.

    It buffers at most one partial frame, and only the bytes of it that have
    arrived: memory grows with what is received, never reserved at the
    declared length. Whole frames inside a fed chunk are cut straight out of
    it.

    Errors poison the decoder: frames decoded earlier in the failing
    ``feed`` call are dropped, the buffer is discarded, and every later
    ``feed`` or ``close`` raises the same error class with the same message
    again. Close the connection.
    """

    __slots__ = ("_buf", "_want", "_error", "_max")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        """Raises ValueError (max_payload outside 0..MAX_PAYLOAD), TypeError (not an integer)."""
        if max_payload.__class__ is not int:
            max_payload = index(max_payload)
        if not 0 <= max_payload <= MAX_PAYLOAD:
            raise _bad_limit(max_payload)
        self._max = max_payload
        #: Start of the one partial frame (header, then the payload bytes received so far).
        self._buf = bytearray()
        #: Total size (header + payload) of the partial frame once its header is in.
        self._want = 0
        self._error: OrpError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held in the buffer."""
        return len(self._buf)

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        """Refuse pickling and copying (TypeError), as the compiled twin does."""
        raise not_copyable("FrameDecoder")

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Consume ``data``; return the frames it completes, in order.

        Raises InvalidVersion, PayloadTooLarge or FrameTooLarge on a bad
        header (and then poisons the decoder), TypeError if data is not
        bytes-like.
        """
        if self._error is not None:
            self._raise_again()
        if data.__class__ is not bytes:
            data = bytes(memoryview(data))
        frames: list[Frame] = []
        end = len(data)
        pos = 0
        buf = self._buf
        try:
            if buf:
                have = len(buf)
                if have < HEADER_SIZE:
                    pos = min(HEADER_SIZE - have, end)
                    buf += data[:pos]
                    if len(buf) < HEADER_SIZE:
                        return frames
                    self._want = HEADER_SIZE + self._check(*_unpack_header(buf))[2]
                take = min(self._want - len(buf), end - pos)
                buf += data[pos : pos + take]
                pos += take
                if len(buf) < self._want:
                    return frames
                word0, flags, _ = _unpack_header(buf)
                frames.append(Frame(word0 & MAX_TYPE, bytes(buf[HEADER_SIZE:]), flags))
                buf.clear()
            while end - pos >= HEADER_SIZE:
                word0, flags, length = self._check(*_unpack_header(data, pos))
                stop = pos + HEADER_SIZE + length
                if stop > end:
                    self._want = stop - pos
                    break
                frames.append(Frame(word0 & MAX_TYPE, data[pos + HEADER_SIZE : stop], flags))
                pos = stop
            if pos < end:
                buf += data[pos:]
        except OrpError as exc:
            self._error = exc
            buf.clear()
            raise
        return frames

    def close(self) -> None:
        """Declare the end of the stream.

        Returns None when it ended between frames. Raises TruncatedFrame
        (and poisons the decoder) when a partial frame is pending, or the
        poisoning error again.
        """
        if self._error is not None:
            self._raise_again()
        have = len(self._buf)
        if not have:
            return
        if have < HEADER_SIZE:
            msg = f"orp: truncated frame: stream ended after {have} of {HEADER_SIZE} header bytes"
        else:
            word0, _, length = _unpack_header(self._buf)
            msg = (
                f"orp: truncated frame: stream ended after {have - HEADER_SIZE} of {length} "
                f"payload bytes ({_type_label(word0 & MAX_TYPE)})"
            )
        self._error = TruncatedFrame(msg)
        self._buf.clear()
        raise self._error

    def _check(self, word0: int, flags: int, length: int) -> tuple[int, int, int]:
        version = word0 >> 13
        if version != VERSION:
            raise _bad_version(version)
        if length > self._max:
            raise _too_large(length, self._max)
        return word0, flags, length

    def _raise_again(self) -> None:
        assert self._error is not None
        raise self._error.__class__(*self._error.args)
