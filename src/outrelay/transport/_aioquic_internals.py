"""Every use of aioquic's private names, in one place.

aioquic has no public API for three things OutRelay needs (see
``docs/transport.md``):

1. **Asking for a client certificate.** The TLS context only sends a
   CertificateRequest when its private ``_request_client_certificate`` is set;
   the context is created in ``QuicConnection._initialize``, so we set it
   right after the base method runs. aioquic checks the client's
   CertificateVerify signature (proof of key possession) but never verifies
   the chain; :mod:`outrelay.transport.verify` does that on the leaf and chain
   read here from ``_peer_certificate`` / ``_peer_certificate_chain``.
2. **Application-driven receive credit.** ``_write_stream_limits`` doubles a
   stream's ``max_stream_data_local`` once the peer has sent more than half of
   it, and ``_write_connection_limits`` does the same for ``_local_max_data``,
   whether or not anything was consumed. We keep aioquic's frame writing
   (and its retransmission of lost MAX_* frames) but hide the doubling
   heuristic's input for the duration of the call, and move the limits
   ourselves in :meth:`FlowControlledConnection.grant`: the window stays
   fixed and slides only as the application reports bytes consumed.
3. **Send-buffer occupancy.** ``send_stream_data`` appends to the stream
   sender's ``bytearray`` without limit; :meth:`send_buffered` reads how
   much of it is still unacknowledged so the caller can stop feeding it.

:func:`check_internals` asserts that all of this is still where we expect it
on the installed aioquic; ``tests/transport/test_aioquic_internals.py`` runs
it so an upgrade that moves anything fails loudly, naming what moved.
"""

from __future__ import annotations

import inspect
from typing import Any

import aioquic
from aioquic import tls
from aioquic.quic import stream as quic_stream
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509

#: The aioquic versions this module was tested against (pip specifier).
TESTED_AIOQUIC = ">=1.7,<1.8"


class FlowControlledConnection(QuicConnection):
    """A ``QuicConnection`` with client-cert requests and fixed, granted windows.

    The initial windows are ``configuration.max_stream_data`` per stream and
    ``configuration.max_data`` per connection; they never grow on their own.
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        request_client_certificate: bool = False,
        **kwargs: Any,
    ) -> None:
        self._outrelay_request_client_cert = request_client_certificate
        super().__init__(configuration=configuration, **kwargs)

    # -- mTLS -----------------------------------------------------------

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if self._outrelay_request_client_cert:
            self.tls._request_client_certificate = True

    def peer_certificates(self) -> tuple[x509.Certificate | None, list[x509.Certificate]]:
        """The peer's leaf (``None`` if it sent none) and the rest of its chain."""
        ctx = getattr(self, "tls", None)
        if ctx is None:
            return None, []
        return ctx._peer_certificate, list(ctx._peer_certificate_chain)

    def handshake_confirmed(self) -> bool:
        """True once the handshake is confirmed (client: HANDSHAKE_DONE received).

        A TLS 1.3 client completes its side before the server has seen, let
        alone verified, the client certificate; confirmation is the first point
        at which the client knows the server accepted it.
        """
        return bool(self._handshake_confirmed)

    # -- receive credit -------------------------------------------------

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        # The base doubles the limit when ``receiver.highest_offset * 2`` exceeds
        # it; with the offset hidden it only (re)sends MAX_STREAM_DATA when our
        # granted value differs from the one last sent.
        receiver = stream.receiver
        seen = receiver.highest_offset
        receiver.highest_offset = 0
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = seen

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        # Same for MAX_DATA: the doubling reads ``_local_max_data.used``.
        limit = self._local_max_data
        used = limit.used
        limit.used = 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used

    def grant(self, stream_id: int, stream_bytes: int, connection_bytes: int) -> None:
        """Slide the stream window by ``stream_bytes``, the connection's by ``connection_bytes``.

        The new limits go out in MAX_STREAM_DATA / MAX_DATA frames with the
        next ``datagrams_to_send``. A stream aioquic already discarded is
        skipped (only the connection window moves).
        """
        if connection_bytes > 0:
            self._local_max_data.value += connection_bytes
        if stream_bytes > 0:
            stream = self._streams.get(stream_id)
            if stream is not None and not stream.receiver.is_finished:
                stream.max_stream_data_local += stream_bytes

    def received_offset(self, stream_id: int) -> int | None:
        """Highest offset the peer reached on a stream (its final size after a reset)."""
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.receiver.highest_offset

    def receive_limits(self, stream_id: int) -> tuple[int | None, int]:
        """(MAX_STREAM_DATA we allow on ``stream_id`` or ``None``, MAX_DATA we allow)."""
        stream = self._streams.get(stream_id)
        per_stream = None if stream is None else stream.max_stream_data_local
        return per_stream, self._local_max_data.value

    # -- send buffer ----------------------------------------------------

    def send_buffered(self, stream_id: int) -> int:
        """Bytes written to ``stream_id`` and not yet acknowledged (0 once reset or gone)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        if sender._reset_error_code is not None:
            return 0
        return int(sender._buffer_stop - sender._buffer_start)

    def send_reset(self, stream_id: int) -> bool:
        """True if our sending side of ``stream_id`` was reset (by us or by STOP_SENDING)."""
        stream = self._streams.get(stream_id)
        return stream is not None and stream.sender._reset_error_code is not None

    def stream_known(self, stream_id: int) -> bool:
        """True while aioquic still holds state for ``stream_id``."""
        return stream_id in self._streams


# -- the tripwire --------------------------------------------------------

#: (owner, attribute, what we need it to be) for names used above.
_ATTRIBUTES: list[tuple[str, str]] = [
    ("tls.Context()", "_request_client_certificate"),
    ("tls.Context()", "_peer_certificate"),
    ("tls.Context()", "_peer_certificate_chain"),
    ("QuicStreamSender()", "_reset_error_code"),
    ("QuicStreamSender()", "_buffer_start"),
    ("QuicStreamSender()", "_buffer_stop"),
    ("QuicStreamReceiver()", "highest_offset"),
    ("QuicStreamReceiver()", "is_finished"),
    ("QuicStream()", "max_stream_data_local"),
    ("QuicStream()", "max_stream_data_local_sent"),
]

#: (method, parameter names after self) we override or call.
_METHODS: list[tuple[str, list[str]]] = [
    ("_initialize", ["peer_cid"]),
    ("_write_stream_limits", ["builder", "space", "stream"]),
    ("_write_connection_limits", ["builder", "space"]),
]

#: Source fragments of the heuristics we neutralise: if these change, the
#: trick in ``_write_*_limits`` may no longer hold.
_SOURCE_FRAGMENTS: list[tuple[str, str]] = [
    ("_write_stream_limits", "stream.receiver.highest_offset * 2 > stream.max_stream_data_local"),
    ("_write_stream_limits", "stream.max_stream_data_local *= 2"),
    ("_write_stream_limits", "stream.max_stream_data_local_sent != stream.max_stream_data_local"),
    ("_write_connection_limits", "max_data.used * 2 > max_data.value"),
    ("_write_connection_limits", "limit.value != limit.sent"),
    ("_initialize", "self.tls = tls.Context("),
    ("_handle_handshake_done_frame", "self._confirm_handshake()"),
    ("_confirm_handshake", "self._handshake_confirmed = True"),
    ("__init__", "self._local_max_data = Limit("),
    ("__init__", "value=configuration.max_data"),
    ("__init__", "self._local_max_stream_data_bidi_local = configuration.max_stream_data"),
    ("__init__", "self._local_max_stream_data_bidi_remote = configuration.max_stream_data"),
    ("_handle_stream_frame", "offset + length > stream.max_stream_data_local"),
    ("_handle_stream_frame", "self._local_max_data.used + newly_received"),
]


class InternalsChanged(AssertionError):
    """The installed aioquic no longer has a private name this package relies on."""


def check_internals() -> None:
    """Assert every aioquic private name used here exists as expected.

    Raises:
        InternalsChanged: listing every name that moved or changed, and the
            installed aioquic version.
    """
    problems: list[str] = []
    samples: dict[str, object] = {
        "tls.Context()": tls.Context(is_client=False),
        "QuicStreamSender()": quic_stream.QuicStreamSender(stream_id=0, writable=True),
        "QuicStreamReceiver()": quic_stream.QuicStreamReceiver(stream_id=0, readable=True),
        "QuicStream()": quic_stream.QuicStream(stream_id=0),
    }
    for owner, name in _ATTRIBUTES:
        if not hasattr(samples[owner], name):
            problems.append(f"{owner}.{name} is missing")
    for name, params in _METHODS:
        method = getattr(QuicConnection, name, None)
        if method is None:
            problems.append(f"QuicConnection.{name} is missing")
            continue
        got = list(inspect.signature(method).parameters)[1:]
        if got != params:
            problems.append(f"QuicConnection.{name}{tuple(got)} != expected {tuple(params)}")
    for name, fragment in _SOURCE_FRAGMENTS:
        try:
            source = inspect.getsource(getattr(QuicConnection, name))
        except (AttributeError, OSError, TypeError) as exc:
            problems.append(f"QuicConnection.{name}: source unavailable ({exc})")
            continue
        if fragment not in " ".join(source.split()):
            problems.append(f"QuicConnection.{name} no longer contains {fragment!r}")
    for name in ("_local_max_data", "_streams", "_handshake_confirmed"):
        if name not in inspect.getsource(QuicConnection.__init__):
            problems.append(f"QuicConnection.__init__ no longer sets {name}")
    if problems:
        raise InternalsChanged(
            f"aioquic {aioquic.__version__} (tested {TESTED_AIOQUIC}) moved internals "
            "that outrelay.transport._aioquic_internals relies on:\n  - " + "\n  - ".join(problems)
        )
