"""ORP, the OutRelay protocol: frame codec, typed payloads and the stream FSM.

The codec and the FSM exist twice, compiled (``outrelay._fast``) and pure
Python (``_codec_py``, ``_fsm_py``), with identical behaviour; the compiled
ones are used when built. ``IMPLEMENTATION`` says which one is active.
"""

from outrelay._compat import select
from outrelay.orp import _codec_py, _fsm_py
from outrelay.orp.errors import (
    FrameTooLarge,
    InvalidFlags,
    InvalidTransition,
    InvalidType,
    InvalidVersion,
    MessageError,
    OrpError,
    PayloadTooLarge,
    ShortHeader,
    TruncatedFrame,
    TypeMismatch,
)
from outrelay.orp.types import (
    HEADER_SIZE,
    MAX_CONTROL_PAYLOAD,
    MAX_PAYLOAD,
    MAX_TYPE,
    VERSION,
    FrameType,
    StreamEvent,
    StreamState,
)

_codec, IMPLEMENTATION = select("outrelay._fast._codec", _codec_py)
_fsm, _FSM_IMPLEMENTATION = select("outrelay._fast._fsm", _fsm_py)

Frame = _codec.Frame
FrameDecoder = _codec.FrameDecoder
encode_header = _codec.encode_header
decode_header = _codec.decode_header
encode_frame = _codec.encode_frame
StreamFSM = _fsm.StreamFSM

from outrelay.orp.messages import decode_message, encode_message  # noqa: E402

__all__ = [
    "HEADER_SIZE",
    "IMPLEMENTATION",
    "MAX_CONTROL_PAYLOAD",
    "MAX_PAYLOAD",
    "MAX_TYPE",
    "VERSION",
    "Frame",
    "FrameDecoder",
    "FrameTooLarge",
    "FrameType",
    "InvalidFlags",
    "InvalidTransition",
    "InvalidType",
    "InvalidVersion",
    "MessageError",
    "OrpError",
    "PayloadTooLarge",
    "ShortHeader",
    "StreamEvent",
    "StreamFSM",
    "StreamState",
    "TruncatedFrame",
    "TypeMismatch",
    "decode_header",
    "decode_message",
    "encode_frame",
    "encode_header",
    "encode_message",
]
