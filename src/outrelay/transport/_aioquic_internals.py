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
   ourselves: :meth:`FlowControlledConnection.grant` records what the
   application consumed, and the advertised limit catches up with it once
   the peer has less than half a window of credit left (checked as each
   packet is built), so a stream of small grants does not put a MAX_DATA /
   MAX_STREAM_DATA frame, and an ack-eliciting packet, on the wire each time.
   The window stays fixed: the advertised limit never exceeds consumed +
   window.
3. **Send-buffer occupancy.** ``send_stream_data`` appends to the stream
   sender's ``bytearray`` without limit; :meth:`send_buffered` reads how
   much of it is still unacknowledged so the caller can stop feeding it.
4. **Piggybacked ACKs.** aioquic delays every ACK by ``K_GRANULARITY``
   (1 ms) and writes it only once that time has passed, so a reply sent
   sooner travels without it and an ACK-only packet follows by timer.
   :meth:`FlowControlledConnection.datagrams_to_send_with_ack` moves the
   pending ACK of the 1-RTT space (``_spaces``, ``QuicPacketSpace.ack_at``)
   to now when the application has data going out anyway.
5. **Delayed ACK of a lone packet.** aioquic acknowledges every 1-RTT
   packet 1 ms after it arrived (``_ack_delay``). A lone ack-eliciting packet
   that gets no reply within 1 ms (a control frame, the last packet of a
   request) therefore costs an ACK-only datagram each way of the peer's
   processing. RFC 9000 §13.2 lets a receiver wait up to the
   ``max_ack_delay`` it advertises (aioquic advertises 25 ms) and asks for an
   ACK once two ack-eliciting packets arrived. :meth:`receive_datagram`
   does that: a packet that starts an ACK delay gets :data:`LONE_ACK_DELAY`;
   as soon as another packet arrives while it runs, the ACK falls back to
   aioquic's 1 ms, so bulk transfer is acknowledged exactly as before. A
   reply or the next request carries the ACK instead of a datagram of its
   own (see 4.).
6. **Stateless replies for address validation** (``admission.py``). The
   Retry packet (RFC 9000 §17.2.5, integrity tag of RFC 9001 §5.8) comes
   from aioquic's ``encode_quic_retry``; the INVALID_TOKEN close of an
   attempt we keep no state for is one server Initial packet protected with
   the Initial keys of the client's destination connection id, built with
   aioquic's ``CryptoPair`` and ``QuicPacketBuilder``
   (:func:`encode_invalid_token_close`).

:func:`check_internals` asserts that all of this is still where we expect it
on the installed aioquic; ``tests/transport/test_aioquic_internals.py`` runs
it so an upgrade that moves anything fails loudly, naming what moved.
"""

from __future__ import annotations

import inspect
from typing import Any

import aioquic
from aioquic import tls
from aioquic.quic import recovery as quic_recovery
from aioquic.quic import stream as quic_stream
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY, QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    encode_quic_retry,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from cryptography import x509

#: The aioquic versions this module was tested against (pip specifier).
TESTED_AIOQUIC = ">=1.7,<1.8"

#: ACK delay (seconds) of a lone ack-eliciting 1-RTT packet: below the 25 ms
#: ``max_ack_delay`` aioquic advertises, which the peer's loss timer allows for.
LONE_ACK_DELAY = 0.020


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
        max_streams: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._outrelay_request_client_cert = request_client_certificate
        self._outrelay_stream_window = configuration.max_stream_data
        self._outrelay_data_window = configuration.max_data
        #: MAX_DATA the application's grants allow (advertised lazily).
        self._outrelay_max_data = configuration.max_data
        #: stream id -> MAX_STREAM_DATA the grants allow, where not advertised yet.
        self._outrelay_stream_limits: dict[int, int] = {}
        super().__init__(configuration=configuration, **kwargs)
        if max_streams is not None:
            # aioquic fixes the peer's concurrent bidirectional streams at 128;
            # the value goes out in our transport parameters and grows by one
            # per stream that ends, as before.
            # ``sent`` too: the transport parameters announce ``value``.
            limit = self._local_max_streams_bidi
            limit.value = limit.sent = max_streams

    # -- stream credit ----------------------------------------------------

    def streams_available(self) -> int:
        """Bidirectional streams we may still open before the peer's MAX_STREAMS blocks us."""
        opened = self._local_next_stream_id_bidi // 4
        return max(0, self._remote_max_streams_bidi - opened)

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

    # -- ACK delay ------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        """aioquic's ``receive_datagram``, with the lone-packet ACK delay (module doc, 5.)."""
        space = self._spaces.get(tls.Epoch.ONE_RTT) if self._handshake_complete else None
        if space is None:
            super().receive_datagram(data, addr, now)
            return
        pending = space.ack_at
        largest = space.largest_received_packet
        super().receive_datagram(data, addr, now)
        due = space.ack_at
        if due is None:
            return
        if pending is None:
            # this datagram started the delay: a lone packet, so far
            space.ack_at = now + LONE_ACK_DELAY
        elif space.largest_received_packet != largest and due > now + self._ack_delay:
            # a second packet while a long delay runs: aioquic's delay again
            space.ack_at = now + self._ack_delay

    # -- receive credit -------------------------------------------------

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        # aioquic calls this for every stream in every packet it builds, so the
        # common case (nothing to say) is one comparison.
        pending = self._outrelay_stream_limits
        if pending:
            target = pending.get(stream.stream_id)
            if target is not None:
                receiver = stream.receiver
                if receiver.is_finished:
                    del pending[stream.stream_id]  # nothing more will arrive
                elif (
                    stream.max_stream_data_local - receiver.highest_offset
                ) * 2 < self._outrelay_stream_window:
                    stream.max_stream_data_local = target
                    del pending[stream.stream_id]
        if stream.max_stream_data_local_sent == stream.max_stream_data_local:
            return
        # The base doubles the limit when ``receiver.highest_offset * 2`` exceeds
        # it; with the offset hidden it only (re)sends MAX_STREAM_DATA when our
        # advertised value differs from the one last sent.
        receiver = stream.receiver
        seen = receiver.highest_offset
        receiver.highest_offset = 0
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = seen

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        limit = self._local_max_data
        used = limit.used
        if (
            self._outrelay_max_data != limit.value
            and (limit.value - used) * 2 < self._outrelay_data_window
        ):
            limit.value = self._outrelay_max_data
        # Same as above for MAX_DATA: the doubling reads ``_local_max_data.used``.
        limit.used = 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used

    def grant(self, stream_id: int, stream_bytes: int, connection_bytes: int) -> None:
        """Slide the stream window by ``stream_bytes``, the connection's by ``connection_bytes``.

        The peer learns of it (MAX_STREAM_DATA / MAX_DATA) in the next packet
        built once it has less than half a window of credit left on that
        stream, resp. connection: it is never held below half a window while
        there is consumed data to grant, and never given more than consumed +
        window. A stream aioquic already discarded, or one whose data has all
        arrived, is skipped (only the connection window moves).
        """
        if connection_bytes > 0:
            self._outrelay_max_data += connection_bytes
        if stream_bytes > 0:
            stream = self._streams.get(stream_id)
            if stream is not None and not stream.receiver.is_finished:
                pending = self._outrelay_stream_limits
                pending[stream_id] = (
                    pending.get(stream_id, stream.max_stream_data_local) + stream_bytes
                )

    def datagrams_to_send_with_ack(self, now: float) -> list[tuple[bytes, Any]]:
        """``datagrams_to_send``, with a pending 1-RTT ACK written now, not after its delay.

        For when a packet goes out anyway (stream data): the ACK rides along
        and no ACK-only packet follows when the delay runs out. Acknowledging early is
        always allowed (the delay is an upper bound). If no packet could be
        built (pacing), the ACK keeps its original deadline.
        """
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        due = None if space is None else space.ack_at
        if due is None or due <= now:
            return self.datagrams_to_send(now)
        assert space is not None
        space.ack_at = now
        try:
            return self.datagrams_to_send(now)
        finally:
            if space.ack_at == now:  # not written
                space.ack_at = due

    def received_offset(self, stream_id: int) -> int | None:
        """Highest offset the peer reached on a stream (its final size after a reset)."""
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.receiver.highest_offset

    def receive_limits(self, stream_id: int) -> tuple[int | None, int]:
        """(MAX_STREAM_DATA advertised on ``stream_id`` or ``None``, MAX_DATA advertised).

        Grants show here once they were advertised (see :meth:`grant`).
        """
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


# -- stateless replies (address validation) -------------------------------


def encode_retry(
    *, version: int, client_scid: bytes, client_dcid: bytes, retry_scid: bytes, token: bytes
) -> bytes:
    """A Retry packet answering an Initial (``client_dcid`` is its original DCID).

    The client must send its next Initial to ``retry_scid``, carrying ``token``.
    """
    return encode_quic_retry(
        version=version,
        source_cid=retry_scid,
        destination_cid=client_scid,
        original_destination_cid=client_dcid,
        retry_token=token,
    )


def encode_invalid_token_close(*, version: int, client_scid: bytes, client_dcid: bytes) -> bytes:
    """A server Initial closing the attempt with INVALID_TOKEN (RFC 9000 §8.1.3).

    Protected with the Initial keys derived from ``client_dcid``, as the
    client expects before any connection state exists on our side.
    """
    crypto = CryptoPair()
    crypto.setup_initial(cid=client_dcid, is_client=False, version=version)
    builder = QuicPacketBuilder(
        host_cid=client_dcid,
        peer_cid=client_scid,
        version=version,
        is_client=False,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(
        QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY
    )
    buf.push_uint_var(QuicErrorCode.INVALID_TOKEN)
    buf.push_uint_var(QuicFrameType.PADDING)  # the frame type that caused it: none
    buf.push_uint_var(0)  # no reason phrase
    datagrams, _ = builder.flush()
    return bytes(datagrams[0])


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
    ("QuicPacketSpace()", "ack_at"),
    ("QuicPacketSpace()", "largest_received_packet"),
]

#: (method, parameter names after self) we override or call.
_METHODS: list[tuple[str, list[str]]] = [
    ("_initialize", ["peer_cid"]),
    ("receive_datagram", ["data", "addr", "now"]),
    ("_write_stream_limits", ["builder", "space", "stream"]),
    ("_write_connection_limits", ["builder", "space"]),
]

#: Keyword parameters of aioquic functions and constructors we call by name.
_KEYWORDS: list[tuple[str, Any, list[str]]] = [
    (
        "QuicConnection",
        QuicConnection.__init__,
        ["original_destination_connection_id", "retry_source_connection_id"],
    ),
    (
        "encode_quic_retry",
        encode_quic_retry,
        [
            "version",
            "source_cid",
            "destination_cid",
            "original_destination_cid",
            "retry_token",
        ],
    ),
    ("CryptoPair.setup_initial", CryptoPair.setup_initial, ["cid", "is_client", "version"]),
    (
        "QuicPacketBuilder",
        QuicPacketBuilder.__init__,
        ["host_cid", "peer_cid", "version", "is_client", "max_datagram_size"],
    ),
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
    ("__init__", "self._local_max_streams_bidi = Limit("),
    ("__init__", "self._remote_max_streams_bidi = 0"),
    ("__init__", "self._local_next_stream_id_bidi = 0 if self._is_client else 1"),
    ("_handle_max_streams_bidi_frame", "self._remote_max_streams_bidi = max_streams"),
    ("__init__", "self._local_max_stream_data_bidi_local = configuration.max_stream_data"),
    ("__init__", "self._local_max_stream_data_bidi_remote = configuration.max_stream_data"),
    ("_handle_stream_frame", "offset + length > stream.max_stream_data_local"),
    ("_handle_stream_frame", "self._local_max_data.used + newly_received"),
    ("_write_application", "for stream in self._streams.values(): self._write_stream_limits("),
    ("_write_application", "space.ack_at is not None and space.ack_at <= now"),
    (
        "receive_datagram",
        "if is_ack_eliciting and space.ack_at is None: space.ack_at = now + self._ack_delay",
    ),
    ("receive_datagram", "space.largest_received_packet = packet_number"),
    ("_write_application", "self._write_connection_limits(builder=builder, space=space)"),
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
        "QuicPacketSpace()": quic_recovery.QuicPacketSpace(),
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
    for label, func, keywords in _KEYWORDS:
        accepted = inspect.signature(func).parameters
        for keyword in keywords:
            if keyword not in accepted:
                problems.append(f"{label} no longer takes {keyword}=")
    for name, fragment in _SOURCE_FRAGMENTS:
        try:
            source = inspect.getsource(getattr(QuicConnection, name))
        except (AttributeError, OSError, TypeError) as exc:
            problems.append(f"QuicConnection.{name}: source unavailable ({exc})")
            continue
        if fragment not in " ".join(source.split()):
            problems.append(f"QuicConnection.{name} no longer contains {fragment!r}")
    for name in (
        "_local_max_data",
        "_streams",
        "_handshake_confirmed",
        "_handshake_complete",
        "_spaces",
        "_ack_delay",
    ):
        if name not in inspect.getsource(QuicConnection.__init__):
            problems.append(f"QuicConnection.__init__ no longer sets {name}")
    if problems:
        raise InternalsChanged(
            f"aioquic {aioquic.__version__} (tested {TESTED_AIOQUIC}) moved internals "
            "that outrelay.transport._aioquic_internals relies on:\n  - " + "\n  - ".join(problems)
        )
