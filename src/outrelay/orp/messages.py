"""Typed ORP payloads: protobuf messages in and out of frames (wire.md 2.3).

``encode_message`` is the reference's ``MarshalProto`` + encode (version 1,
flags 0, header and payload contiguous); ``decode_message`` is its
``UnmarshalProto`` with a type check that is always on.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from google.protobuf.message import Error as ProtobufError
from google.protobuf.message import Message

# outrelay.orp imports this module last, after it has chosen the codec, so
# these names already exist whichever module is imported first.
from outrelay.orp import encode_frame
from outrelay.orp._codec_py import _type_label
from outrelay.orp.errors import MessageError, TypeMismatch

__all__ = ["decode_message", "encode_message"]

M = TypeVar("M", bound=Message)


class FrameLike(Protocol):
    """What ``decode_message`` reads from a frame (either codec twin's Frame)."""

    @property
    def type(self) -> int: ...

    @property
    def payload(self) -> bytes: ...


def encode_message(ftype: int, msg: Message) -> bytes:
    """Serialise ``msg`` and return it as one whole frame of type ``ftype``.

    Raises MessageError when protobuf cannot serialise the message, and what
    ``encode_frame`` raises (InvalidType, PayloadTooLarge).
    """
    try:
        payload = msg.SerializeToString()
    except ProtobufError as exc:
        raise MessageError(f"orp: marshal {_type_label(ftype)}: {exc}") from exc
    return encode_frame(ftype, payload)


def decode_message(frame: FrameLike, ftype: int, cls: type[M]) -> M:
    """Parse ``frame``'s payload as a ``cls`` message, checking its type first.

    Raises TypeMismatch when ``frame.type != ftype`` and MessageError when
    the payload is not a valid ``cls`` encoding.
    """
    if frame.type != ftype:
        raise TypeMismatch(
            f"orp: frame type mismatch: got {_type_label(frame.type)}, want {_type_label(ftype)}"
        )
    msg = cls()
    try:
        msg.ParseFromString(frame.payload)
    except ProtobufError as exc:
        raise MessageError(f"orp: unmarshal {_type_label(ftype)} as {cls.__name__}: {exc}") from exc
    return msg
