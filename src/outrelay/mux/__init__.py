"""yamux v0 multiplexing (hashicorp/yamux spec), the session under the TCP+TLS transport.

The session exists twice, compiled (``outrelay._fast._yamux``) and pure Python
(``_session_py``), with identical behaviour; the compiled one is used when
built. ``IMPLEMENTATION`` says which one is active. See ``_session_py`` for
how the session works and ``docs/transport.md`` for the wire.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from outrelay import _compat
from outrelay.mux import _session_py
from outrelay.mux.constants import (
    DEFAULT_MAX_STREAMS,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GOAWAY_INTERNAL_ERROR,
    GOAWAY_NORMAL,
    GOAWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_DATA_FRAME,
    MAX_TYPE,
    MAX_U32,
    PEER_MAX_STREAMS,
    RESET_CODE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    VERSION,
)
from outrelay.mux.errors import (
    DuplicateStream,
    InvalidStreamId,
    InvalidType,
    InvalidVersion,
    ProtocolError,
    ShortHeader,
    StreamClosedByPeer,
    StreamsExhausted,
    WindowExceeded,
    YamuxError,
)

COMPILED = "outrelay._fast._yamux"


def _compiled_source_exists() -> bool:
    """True when this tree has the compiled twin's source (``_yamux.pyx``) or a build of it."""
    spec = importlib.util.find_spec("outrelay._fast")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        p.name.startswith("_yamux.")
        for loc in spec.submodule_search_locations
        for p in Path(loc).iterdir()
    )


try:
    _session, IMPLEMENTATION = _compat.select(COMPILED, _session_py)
except ImportError:
    # OUTRELAY_REQUIRE_EXTENSIONS is set and the module is missing. That is an
    # error once the tree has the compiled twin's source; a tree without it
    # (no _yamux.pyx at all) has only the pure twin to offer.
    if _compiled_source_exists():
        raise
    _session, IMPLEMENTATION = _session_py, "pure"

YamuxSession = _session.YamuxSession
encode_header = _session.encode_header
decode_header = _session.decode_header

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "FLAG_ACK",
    "FLAG_FIN",
    "FLAG_RST",
    "FLAG_SYN",
    "GOAWAY_INTERNAL_ERROR",
    "GOAWAY_NORMAL",
    "GOAWAY_PROTOCOL_ERROR",
    "HEADER_SIZE",
    "IMPLEMENTATION",
    "INITIAL_WINDOW",
    "MAX_DATA_FRAME",
    "MAX_TYPE",
    "MAX_U32",
    "PEER_MAX_STREAMS",
    "RESET_CODE",
    "TYPE_DATA",
    "TYPE_GO_AWAY",
    "TYPE_PING",
    "TYPE_WINDOW_UPDATE",
    "VERSION",
    "DuplicateStream",
    "InvalidStreamId",
    "InvalidType",
    "InvalidVersion",
    "ProtocolError",
    "ShortHeader",
    "StreamClosedByPeer",
    "StreamsExhausted",
    "WindowExceeded",
    "YamuxError",
    "YamuxSession",
    "decode_header",
    "encode_header",
]
