"""One ORP QUIC connection, sans-IO: datagrams and time in, events and datagrams out.

How this works
--------------
:class:`OrpConnection` owns an aioquic connection (our subclass in
``_aioquic_internals``) and is driven exactly like it: ``receive_datagram``,
``handle_timer`` / ``get_timer`` and ``datagrams_to_send``. After each input it
translates aioquic's events into ours (``events.py``):

* **Verification gate.** On aioquic's ``HandshakeCompleted`` the peer's chain is
  verified (``verify.py``), then its role (``config.peer_roles`` /
  ``config.peer_uri``). Only then is :class:`HandshakeVerified` emitted; on
  failure the connection is closed with the crypto error ``0x100 + alert`` and
  nothing about streams is ever reported. Stream events that would arrive
  before the verdict are held, then released or dropped.
* **Receive credit.** The peer may send at most ``stream_window`` bytes beyond
  what the application has :meth:`grant`-ed on a stream, and
  ``connection_window`` over the connection. Data is handed over as it
  arrives (no buffering here); the application grants it back as it consumes
  it (the relay: as the opposite leg acknowledges it).
* **Send buffer.** :meth:`send` never refuses data; :meth:`send_buffered` says
  how much is still unacknowledged, and :class:`SendCapacityAvailable` reports
  each shrink, so the caller stops feeding a full stream and resumes later.
* **Keepalive.** A PING goes out when nothing was received for ``keepalive``
  seconds, so an idle but healthy connection outlives ``idle_timeout``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from aioquic.quic import events as qe
from aioquic.quic.packet import QuicFrameType
from cryptography import x509

from outrelay.transport import events as ev
from outrelay.transport._aioquic_internals import FlowControlledConnection
from outrelay.transport.config import TransportConfig
from outrelay.transport.errors import (
    ConnectionClosedError,
    PeerVerificationError,
    StreamClosedError,
)
from outrelay.transport.verify import (
    VerifiedPeer,
    check_role,
    load_ca_bundle,
    verify_client,
    verify_server,
)

#: QUIC crypto errors are ``0x100 + TLS alert`` (RFC 9001 §4.8).
CRYPTO_ERROR_BASE = 0x100

NetworkAddress = Any


class _Rx:
    """Receive-side accounting of one stream, in stream offsets."""

    __slots__ = ("delivered", "credited", "released", "finished")

    def __init__(self) -> None:
        self.delivered = 0  # bytes handed to the application
        self.credited = 0  # bytes whose connection credit went back to the peer
        self.released = False  # the application no longer reads this stream
        self.finished = False  # FIN or RESET_STREAM seen: nothing more will arrive


class OrpConnection:
    """A QUIC connection that verifies its peer and lets the application pace data.

    ``ca_certs`` overrides loading ``config.ca`` (a server passes its bundle once
    for all connections). A server whose client came back after a Retry passes
    the original and the Retry's connection ids (transport parameters the
    client checks, RFC 9000 §7.3).
    """

    def __init__(
        self,
        config: TransportConfig,
        *,
        is_client: bool,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
        ca_certs: Sequence[x509.Certificate] | None = None,
    ) -> None:
        self.config = config
        self.is_client = is_client
        self._quic = FlowControlledConnection(
            configuration=config.quic_configuration(is_client=is_client),
            request_client_certificate=not is_client and config.verify_peer,
            max_streams=config.max_streams,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
        )
        if ca_certs is not None:
            self._ca = list(ca_certs)
        elif config.verify_peer and config.ca is not None:
            self._ca = load_ca_bundle(config.ca)
        else:
            self._ca = []
        if config.verify_peer and not self._ca:
            raise ValueError("transport: verify_peer needs a CA bundle")
        self._events: deque[ev.Event] = deque()
        self._held: list[ev.Event] = []
        #: The verified peer once :class:`HandshakeVerified` was emitted.
        self.peer: VerifiedPeer | None = None
        self._verified = False
        self._confirming: ev.HandshakeVerified | None = None  # client: verified, unconfirmed
        self._rejected = False
        #: Why we refused the peer (the full text; the wire carries 200 bytes).
        self._reject_reason: str | None = None
        self._closed = False
        self._close_by_us = False
        self._rx: dict[int, _Rx] = {}
        self._tx: dict[int, int] = {}  # stream id -> buffered bytes at the last report
        self._last_rx: float | None = None
        self._ping_uid = 0
        self._data_queued = False  # stream data or FIN queued since the last datagrams_to_send

    # -- sans-IO driving --------------------------------------------------

    @property
    def host_cid(self) -> bytes:
        """Our current connection id (the endpoint routes datagrams on it)."""
        return self._quic.host_cid

    def connect(self, addr: NetworkAddress, now: float) -> None:
        """Start the handshake (client only)."""
        self._quic.connect(addr, now=now)
        self._last_rx = now

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """Feed one UDP datagram from ``addr``."""
        self._quic.receive_datagram(data, addr, now)
        self._last_rx = now
        self._pump()
        if self._confirming is not None and self._quic.handshake_confirmed():
            self._accept(self._confirming)
        if self._tx:
            self._report_drained()

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (``None``: no timer)."""
        at = self._quic.get_timer()
        ping = self._ping_at()
        if ping is not None and (at is None or ping < at):
            return ping
        return at

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: keepalive, loss detection, idle timeout."""
        ping = self._ping_at()
        if ping is not None and now >= ping:
            self._ping_uid += 1
            self._quic.send_ping(self._ping_uid)
            self._last_rx = now  # next ping one period later unless traffic arrives
        at = self._quic.get_timer()
        if at is not None and now >= at:
            self._quic.handle_timer(now)
            self._pump()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """Datagrams to put on the wire now.

        When stream data is going out, a pending ACK rides in its packet rather
        than in an ACK-only packet once its delay runs out (1 ms, or up to 20 ms for
        a lone packet: see ``_aioquic_internals``).
        """
        if self._data_queued:
            self._data_queued = False
            return self._quic.datagrams_to_send_with_ack(now)
        return self._quic.datagrams_to_send(now)

    def next_event(self) -> ev.Event | None:
        """The next event, or ``None``."""
        try:
            return self._events.popleft()
        except IndexError:
            return None

    # -- application API --------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :class:`ConnectionClosed` was emitted."""
        return self._closed

    @property
    def verified(self) -> bool:
        """True once :class:`HandshakeVerified` was emitted."""
        return self._verified

    def open_stream(self) -> int:
        """Open a new bidirectional stream and return its id.

        Raises:
            ConnectionClosedError: the connection is closing or closed.
        """
        self._check_open()
        stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(stream_id, b"")  # materialise it: ids are not reused
        return stream_id

    def streams_available(self) -> int:
        """Streams :meth:`open_stream` can still open without waiting for the peer.

        The peer allows a number of concurrent streams (QUIC MAX_STREAMS) and
        raises it as streams end; a stream opened beyond it is queued by QUIC
        until then. 0 means the peer's stream credit is used up.
        """
        return self._quic.streams_available()

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` (and optionally FIN) on a stream; never blocks, never refuses.

        Watch :meth:`send_buffered` / :class:`SendCapacityAvailable` to pace.

        Raises:
            ConnectionClosedError: the connection is closing or closed.
            StreamClosedError: our side of the stream was reset or already finished.
        """
        self._check_open()
        if self._quic.send_reset(stream_id):
            raise StreamClosedError(f"stream {stream_id}: sending side was reset")
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except (ValueError, RuntimeError) as exc:
            raise StreamClosedError(f"stream {stream_id}: {exc}") from None
        if data:
            self._tx[stream_id] = self._quic.send_buffered(stream_id)
        if data or end_stream:
            self._data_queued = True

    def send_buffered(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` and not yet acknowledged by the peer."""
        return self._quic.send_buffered(stream_id)

    def grant(self, stream_id: int, n: int) -> int:
        """Report ``n`` bytes of ``stream_id`` consumed; the peer may send that much more.

        Grants beyond what was delivered are clamped; returns the bytes granted.
        A stream that was reset or :meth:`release`-d needs no grants. The peer
        is told (MAX_STREAM_DATA / MAX_DATA) once it has less than half a
        window of credit left, not on every grant.
        """
        rx = self._rx.get(stream_id)
        if rx is None or rx.released or n <= 0:
            return 0
        n = min(n, rx.delivered - rx.credited)
        if n > 0:
            rx.credited += n
            self._quic.grant(stream_id, n, n)
            self._forget_if_done(stream_id, rx)
        return n

    def unconsumed(self, stream_id: int) -> int:
        """Bytes delivered on ``stream_id`` and not yet granted back."""
        rx = self._rx.get(stream_id)
        return 0 if rx is None or rx.released else rx.delivered - rx.credited

    def release(self, stream_id: int) -> None:
        """Stop reading ``stream_id``: return all its connection credit, now and later."""
        rx = self._rx.setdefault(stream_id, _Rx())
        rx.released = True
        self._credit_released(stream_id, rx)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abruptly end our sending side (RESET_STREAM); buffered data is dropped."""
        if self._closed:
            return
        try:
            self._quic.reset_stream(stream_id, error_code)
        except ValueError:
            pass
        self._tx.pop(stream_id, None)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending (STOP_SENDING) and stop reading the stream."""
        if self._closed:
            return
        try:
            self._quic.stop_stream(stream_id, error_code)
        except ValueError:
            pass
        self.release(stream_id)

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close the connection with an application error code (wire.md: 0, empty reason)."""
        self._close_by_us = True
        self._quic.close(error_code=error_code, reason_phrase=reason)

    def receive_limits(self, stream_id: int) -> tuple[int | None, int]:
        """(MAX_STREAM_DATA, MAX_DATA) we currently allow the peer (for tests and stats)."""
        return self._quic.receive_limits(stream_id)

    # -- internals --------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._rejected:
            raise ConnectionClosedError("connection is closed")

    def _ping_at(self) -> float | None:
        if not self._verified or self._closed or self.config.keepalive <= 0:
            return None
        assert self._last_rx is not None
        return self._last_rx + self.config.keepalive

    def _pump(self) -> None:
        quic = self._quic
        while (event := quic.next_event()) is not None:
            kind = type(event)
            if kind is qe.StreamDataReceived:
                self._on_data(event)  # type: ignore[arg-type]
            elif kind is qe.StreamReset:
                self._on_reset(event)  # type: ignore[arg-type]
            elif kind is qe.StopSendingReceived:
                self._tx.pop(event.stream_id, None)  # type: ignore[attr-defined]
                self._emit_stream(
                    ev.StopSendingReceived(event.stream_id, event.error_code)  # type: ignore[attr-defined]
                )
            elif kind is qe.HandshakeCompleted:
                self._on_handshake(event)  # type: ignore[arg-type]
            elif kind is qe.ConnectionTerminated:
                self._on_terminated(event)  # type: ignore[arg-type]
            elif kind is qe.ConnectionIdIssued:
                self._events.append(ev.ConnectionIdIssued(event.connection_id))  # type: ignore[attr-defined]
            elif kind is qe.ConnectionIdRetired:
                self._events.append(ev.ConnectionIdRetired(event.connection_id))  # type: ignore[attr-defined]

    def _emit_stream(self, event: ev.Event) -> None:
        if self._rejected or self._closed:
            return
        if self._verified:
            self._events.append(event)
        else:
            self._held.append(event)

    def _on_data(self, event: qe.StreamDataReceived) -> None:
        if self._rejected or self._closed:
            return
        stream_id = event.stream_id
        rx = self._rx.get(stream_id)
        if rx is None:
            rx = self._rx[stream_id] = _Rx()
        rx.delivered += len(event.data)
        rx.finished = rx.finished or event.end_stream
        if rx.released:
            self._credit_released(stream_id, rx)
            return
        self._emit_stream(ev.StreamDataReceived(stream_id, event.data, event.end_stream))
        self._forget_if_done(stream_id, rx)

    def _on_reset(self, event: qe.StreamReset) -> None:
        # Nothing more will be delivered: return the stream's whole connection
        # credit (including bytes counted up to the final size, never delivered).
        rx = self._rx.setdefault(event.stream_id, _Rx())
        rx.released = True
        rx.finished = True
        self._credit_released(event.stream_id, rx)
        self._emit_stream(ev.StreamReset(event.stream_id, event.error_code))

    def _credit_released(self, stream_id: int, rx: _Rx) -> None:
        seen = self._quic.received_offset(stream_id) or 0
        upto = max(rx.delivered, seen)
        if upto > rx.credited:
            self._quic.grant(stream_id, 0, upto - rx.credited)
            rx.credited = upto
        self._forget_if_done(stream_id, rx)

    def _forget_if_done(self, stream_id: int, rx: _Rx) -> None:
        if rx.finished and rx.credited >= rx.delivered:
            del self._rx[stream_id]

    def _on_handshake(self, event: qe.HandshakeCompleted) -> None:
        leaf, chain = self._quic.peer_certificates()
        try:
            if not self.config.verify_peer:
                peer = None
            elif self.is_client:
                peer = verify_server(leaf, chain, self._ca, self.config.server_name)
            else:
                peer = verify_client(leaf, chain, self._ca, require_uri=self.config.require_uri)
            roles, pinned = self.config.peer_roles, self.config.peer_uri
            if peer is not None and (roles is not None or pinned is not None):
                side = "server" if self.is_client else "client"
                check_role(peer, roles, pinned=pinned, side=side)
        except PeerVerificationError as exc:
            self._rejected = True
            self._reject_reason = exc.reason
            self._held.clear()
            self._close_by_us = True
            self._quic.close(
                error_code=CRYPTO_ERROR_BASE + exc.tls_alert,
                frame_type=QuicFrameType.CRYPTO,
                reason_phrase=exc.reason[:200],
            )
            return
        self.peer = peer
        verified = ev.HandshakeVerified(
            peer_cert=leaf,
            peer_uri=peer.uri if peer is not None else None,
            peer_chain=peer.chain if peer is not None else (),
            alpn=event.alpn_protocol,
        )
        if self.is_client and not self._quic.handshake_confirmed():
            # Wait for HANDSHAKE_DONE: only then has the server accepted *us*.
            self._confirming = verified
        else:
            self._accept(verified)

    def _accept(self, verified: ev.HandshakeVerified) -> None:
        self._confirming = None
        self._verified = True
        self._events.append(verified)
        held, self._held = self._held, []
        self._events.extend(held)

    def _on_terminated(self, event: qe.ConnectionTerminated) -> None:
        if self._closed:
            return
        self._closed = True
        self._confirming = None
        self._held.clear()
        self._tx.clear()
        reason = event.reason_phrase
        if self._reject_reason is not None and self._close_by_us:
            reason = self._reject_reason
        self._events.append(
            ev.ConnectionClosed(
                error_code=event.error_code,
                reason=reason,
                by_us=self._close_by_us,
            )
        )

    def _report_drained(self) -> None:
        buffered = self._quic.send_buffered
        for stream_id, before in list(self._tx.items()):
            now = buffered(stream_id)
            if now < before:
                self._events.append(ev.SendCapacityAvailable(stream_id, before - now, now))
                if now:
                    self._tx[stream_id] = now
                else:
                    del self._tx[stream_id]
