"""The TCP fast path: TCP, TLS 1.3 and a yamux session behind the same seam as QUIC (wire.md §7.4).

How this works
--------------
* **TLS.** Python's ``ssl`` (OpenSSL) with ALPN ``orp/1``, TLS 1.3 only and
  certificates required both ways against the configuration's CA bundle;
  the client checks the server name like the QUIC path
  (``TransportConfig.server_name``).
* **Verification gate.** After the handshake the peer leaf goes through the
  same checks as on QUIC (``verify.py``): :func:`verify_client` /
  :func:`verify_server`, then the role and pin (``peer_roles`` /
  ``peer_uri``). A refused peer is disconnected before a :class:`TcpLink`
  exists, so it never sees a stream and the application never sees it.
* **Mux.** A :class:`outrelay.mux.YamuxSession` (sans-IO) turns the TLS byte
  stream into stream events; :class:`TcpLink` drives it exactly like
  :class:`outrelay.transport.endpoint.Link` drives an ``OrpConnection``:
  ``data_received`` -> ``receive_data`` -> events dispatched at once (to
  ``on_event`` or a queue, :class:`HandshakeVerified` first) -> one flush of
  ``data_to_send`` per burst. Output caused outside a burst (another link's
  events, a task) is flushed once per event-loop pass.
* **Bounded memory.** The socket's write buffer has a high-water mark
  (:data:`WRITE_HIGH`); above it asyncio pauses us and the link stops
  taking bytes out of the session, so they wait there, where the yamux
  windows bound them, and the peers wait for credit. Received data is
  bounded by the receive windows we grant (the session closes a peer that
  sends beyond them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any, cast

from cryptography import x509

from outrelay.mux import YamuxSession
from outrelay.observe import kv
from outrelay.transport import events as ev
from outrelay.transport.config import TransportConfig
from outrelay.transport.errors import (
    ConnectionClosedError,
    HandshakeError,
    PeerVerificationError,
)
from outrelay.transport.verify import (
    VerifiedPeer,
    check_role,
    load_ca_bundle,
    verify_client,
    verify_server,
)

log = logging.getLogger("outrelay.transport")

#: Bytes the TLS transport may buffer before we stop handing it session output.
WRITE_HIGH = 1024 * 1024
#: ... and the level at which we resume.
WRITE_LOW = 256 * 1024
#: Seconds a TLS handshake may take (server and client).
HANDSHAKE_TIMEOUT = 10.0
#: Bytes a client may send after its handshake before it is verified (the
#: yamux SYN and HELLO take a few dozen); more closes the connection.
PRE_VERIFY_LIMIT = 256 * 1024
#: Seconds :meth:`TcpLink.wait_closed` waits for the socket (TLS close_notify) after the end.
LINGER = 1.0

TcpEventHandler = Callable[["TcpLink", ev.Event], None]


# Stream ids. The relay and agent cores number streams as QUIC does (the
# client's bidirectional streams 0, 4, 8 ..., the server's 1, 5, 9 ...; the
# agent's control stream is 0), yamux as 1, 3, 5 ... (dialler) and 2, 4, 6 ...
# (acceptor; the control stream is 1 on the wire, wire.md §7.4). TcpLink
# shows the cores QUIC numbers, so they never learn the transport.


_set_field = object.__setattr__


def _app_id(wire: int) -> int:
    """yamux id -> the QUIC-style id the application sees (1 -> 0, 3 -> 4, 2 -> 1, 4 -> 5)."""
    return 2 * wire - 2 if wire & 1 else 2 * wire - 3


def _wire_id(app: int) -> int:
    """The QUIC-style id -> yamux id (the inverse of :func:`_app_id`)."""
    return (app + 3) >> 1 if app & 1 else (app >> 1) + 1


def server_context(config: TransportConfig) -> ssl.SSLContext:
    """The TLS server context of a ``--listen-tcp`` listener.

    Raises:
        ValueError: no certificate or key.
        OSError, ssl.SSLError: the files cannot be read.
    """
    if config.cert is None or config.key is None:
        raise ValueError("transport: a server needs a certificate and key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(os.fspath(config.cert), os.fspath(config.key))
    ctx.set_alpn_protocols([config.alpn])
    if config.verify_peer:
        if config.ca is None:
            raise ValueError("transport: a verifying server needs a CA bundle")
        ctx.load_verify_locations(cafile=os.fspath(config.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(config: TransportConfig) -> ssl.SSLContext:
    """The TLS client context for dialling a relay's TCP listener.

    Raises:
        ValueError: verification asked for without a CA bundle.
        OSError, ssl.SSLError: the files cannot be read.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([config.alpn])
    if config.cert is not None:
        ctx.load_cert_chain(os.fspath(config.cert), os.fspath(config.key or config.cert))
    if config.verify_peer:
        if config.ca is None:
            raise ValueError("transport: a verifying client needs a CA bundle")
        ctx.load_verify_locations(cafile=os.fspath(config.ca))
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _verify(
    transport: asyncio.BaseTransport,
    config: TransportConfig,
    ca: list[x509.Certificate],
    *,
    is_client: bool,
) -> ev.HandshakeVerified:
    """The QUIC path's checks on a completed TLS handshake.

    Raises:
        PeerVerificationError: ALPN, chain, validity, usage, URI, role or pin refused.
    """
    sslobj: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if sslobj is None:
        raise PeerVerificationError("not a TLS connection")
    alpn = sslobj.selected_alpn_protocol()
    if alpn != config.alpn:
        raise PeerVerificationError(f"ALPN {config.alpn!r} not negotiated (got {alpn!r})")
    der = sslobj.getpeercert(binary_form=True)
    leaf = x509.load_der_x509_certificate(der) if der else None
    peer: VerifiedPeer | None = None
    if config.verify_peer:
        # Our PKI has no intermediates: the leaf chains straight to the CA.
        if is_client:
            peer = verify_server(leaf, [], ca, config.server_name)
        else:
            peer = verify_client(leaf, [], ca, require_uri=config.require_uri)
        if config.peer_roles is not None or config.peer_uri is not None:
            check_role(
                peer,
                config.peer_roles,
                pinned=config.peer_uri,
                side="server" if is_client else "client",
            )
    return ev.HandshakeVerified(
        peer_cert=leaf,
        peer_uri=peer.uri if peer is not None else None,
        peer_chain=peer.chain if peer is not None else (),
        alpn=alpn,
    )


class TcpLink:
    """One TCP+TLS+yamux connection as the application sees it (the QUIC ``Link``'s interface).

    Events go to :attr:`on_event` if set, else into a queue read with
    :meth:`next_event`. Every method that produces output schedules a flush.
    """

    #: Which transport this is (``Link`` has ``"quic"``).
    transport_name = "tcp"

    def __init__(
        self,
        transport: asyncio.Transport,
        config: TransportConfig,
        verified: ev.HandshakeVerified,
        *,
        is_client: bool,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self.addr: Any = transport.get_extra_info("peername")
        # The receive window QUIC gives a stream (``stream_window``, 1 MiB by
        # default), announced on each stream's first frame; yamux starts at 256 KiB.
        self.session = YamuxSession(
            client=is_client,
            window=max(config.stream_window, 256 * 1024),
            max_streams=config.max_streams,
        )
        self.verified = verified
        #: Called synchronously with every event (HandshakeVerified first).
        self.on_event: TcpEventHandler | None = None
        #: Never called on TCP (QUIC reports ICMP errors here); kept for the seam.
        self.on_socket_error: Callable[[Exception], None] | None = None
        self._queue: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._closed: asyncio.Future[ev.ConnectionClosed] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._flush_scheduled = False
        self._in_burst = False
        self._paused = False
        self._started = False
        self._close_by_us = False

    # -- identity ---------------------------------------------------------

    @property
    def peer_uri(self) -> str | None:
        """First URI SAN of the verified peer leaf."""
        return self.verified.peer_uri

    @property
    def closed(self) -> bool:
        """True once the connection is over."""
        return self._closed.done()

    # -- application API (each schedules a flush) -------------------------

    def open_stream(self) -> int:
        """Open a stream; its id is QUIC-style (client 0, 4, 8 ...; server 1, 5, 9 ...).

        Raises:
            ConnectionClosedError: the connection is closing or closed.
        """
        self._check_open()
        stream_id = _app_id(self.session.open_stream())
        self._mark()
        return stream_id

    def streams_available(self) -> int:
        """Streams :meth:`open_stream` can still open."""
        return 0 if self.closed else self.session.streams_available()

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue data (and optionally FIN) on a stream; never blocks, never refuses.

        Raises:
            ConnectionClosedError: the connection is closing or closed.
            StreamClosedError: our side of the stream was reset or already finished.
        """
        self._check_open()
        self.session.send(_wire_id(stream_id), data, end_stream)
        self._mark()

    def send_buffered(self, stream_id: int) -> int:
        """Bytes queued on a stream beyond what the peer's window let go."""
        return 0 if self.closed else self.session.send_buffered(_wire_id(stream_id))

    def grant(self, stream_id: int, n: int) -> int:
        """Report ``n`` bytes consumed: the peer may send that much more (WindowUpdate).

        Clamped to what was delivered and not yet granted; returns the bytes granted.
        """
        if self.closed:
            return 0
        granted = self.session.grant(_wire_id(stream_id), n)
        if granted:
            self._mark()
        return granted

    def unconsumed(self, stream_id: int) -> int:
        """Bytes delivered on ``stream_id`` and not yet granted back."""
        return 0 if self.closed else self.session.unconsumed(_wire_id(stream_id))

    def release(self, stream_id: int) -> None:
        """Stop reading a stream; what arrives later is credited at once."""
        if not self.closed:
            self.session.release(_wire_id(stream_id))
            self._mark()

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abruptly end the stream (yamux RST; buffered data is dropped)."""
        if not self.closed:
            self.session.reset_stream(_wire_id(stream_id), error_code)
            self._mark()

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """Stop reading the stream (yamux has no STOP_SENDING: the stream is reset)."""
        if not self.closed:
            self.session.stop_stream(_wire_id(stream_id), error_code)
            self._mark()

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close the connection (GoAway, then the socket); :meth:`wait_closed` to await it."""
        if self.closed:
            return
        self._close_by_us = True
        if not self.session.closed:
            self.session.close(error_code, reason)  # GoAway; ConnectionClosed follows
            self._mark()
        else:
            self._finish(ev.ConnectionClosed(error_code, reason, by_us=True))

    async def wait_closed(self) -> ev.ConnectionClosed:
        """Wait until the connection is over (and its socket closed, up to 1 s); return why."""
        closed = await asyncio.shield(self._closed)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER):
                await asyncio.shield(self._lost)
        return closed

    async def next_event(self) -> ev.Event:
        """The next event when no :attr:`on_event` callback is set.

        Raises:
            ConnectionClosedError: the connection closed and all events were read.
        """
        if self._queue.empty() and self._closed.done():
            raise ConnectionClosedError("connection is closed")
        return await self._queue.get()

    # -- driver side ------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed or self.session.closed:
            raise ConnectionClosedError("connection is closed")

    def _start(self, early: list[bytes]) -> None:
        """Report the verified peer, then feed what arrived before verification."""
        self._started = True
        self._deliver(self.verified)
        for data in early:
            if self.closed:
                break
            self._receive(data)
        self.flush()

    def _receive(self, data: bytes) -> None:
        if self.closed:
            return
        self._in_burst = True
        try:
            self.session.receive_data(data)
            self._dispatch()
        finally:
            self._in_burst = False
        self.flush()

    def _dispatch(self) -> None:
        session = self.session
        deliver = self._deliver
        while (event := session.next_event()) is not None:
            if self.closed:
                continue  # a session that ended (EOF) may still report; drop it
            if type(event) is ev.ConnectionClosed:
                closed: ev.ConnectionClosed = event
                if self._close_by_us and not closed.by_us:
                    closed = ev.ConnectionClosed(closed.error_code, closed.reason, by_us=True)
                self._finish(closed)
                continue
            # Every other event the session reports is about one stream: give
            # it the QUIC-style id. The event is fresh and ours alone, so the
            # id is set in place rather than paying for a second event per chunk.
            wire = event.stream_id
            _set_field(event, "stream_id", 2 * wire - 2 if wire & 1 else 2 * wire - 3)
            deliver(event)

    def _deliver(self, event: ev.Event) -> None:
        callback = self.on_event
        if callback is None:
            self._queue.put_nowait(event)
            return
        try:
            callback(self, event)
        except Exception:
            log.exception("transport: event handler failed; closing the connection")
            self.close(1, "internal error")

    def _finish(self, event: ev.ConnectionClosed) -> None:
        if self._closed.done():
            return
        self._closed.set_result(event)
        self._deliver(event)
        # The GoAway (if any) leaves with the last flush; then the socket closes.
        self._loop.call_soon(self._close_transport)

    def _close_transport(self) -> None:
        self.flush(force=True)
        if not self._transport.is_closing():
            self._transport.close()

    def _mark(self) -> None:
        if not self._flush_scheduled and not self._in_burst:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        # The session queues events on API calls too (SendCapacityAvailable
        # after a send, StreamReset after a reset): delivered here, once per
        # loop pass, never from inside the call that caused them.
        if not self._flush_scheduled:
            return
        if not self.closed:
            self._in_burst = True
            try:
                self._dispatch()
            finally:
                self._in_burst = False
        self.flush()

    def flush(self, *, force: bool = False) -> None:
        """Hand what the session has to send to TLS (unless the socket is backed up)."""
        self._flush_scheduled = False
        if self._paused and not force:
            return
        transport = self._transport
        if transport.is_closing():
            return
        data = self.session.data_to_send()
        if data:
            transport.write(data)

    # -- asyncio protocol callbacks (via _TcpProtocol) --------------------

    def _pause_writing(self) -> None:
        self._paused = True

    def _resume_writing(self) -> None:
        self._paused = False
        self.flush()

    def _connection_lost(self, exc: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(None)
        if self.closed:
            return
        reason = f"connection lost: {exc}" if exc else "connection closed by the peer"
        self._dispatch()
        if not self.closed:
            self.session.connection_lost(reason)
            self._dispatch()
        if not self.closed:
            self._finish(ev.ConnectionClosed(0, reason, by_us=self._close_by_us))


class _TcpProtocol(asyncio.Protocol):
    """asyncio callbacks of one TLS connection, forwarded to its :class:`TcpLink`."""

    def __init__(self) -> None:
        self.link: TcpLink | None = None
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self._early_size = 0
        self.lost: asyncio.Future[None] | None = None
        self.on_made: Callable[[_TcpProtocol], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: a cast, no check
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        link = self.link
        if link is not None and link._started:
            link._receive(data)
            return
        self._early_size += len(data)
        if self._early_size > PRE_VERIFY_LIMIT:
            if self.transport is not None:
                self.transport.abort()
            return
        self.early.append(data)

    def eof_received(self) -> bool | None:
        return False  # close our side too: yamux has no half-closed connection

    def pause_writing(self) -> None:
        if self.link is not None:
            self.link._pause_writing()

    def resume_writing(self) -> None:
        if self.link is not None:
            self.link._resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self.link._connection_lost(exc)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)


class _Accepting(asyncio.Protocol):
    """A raw accepted TCP connection until its TLS handshake is done."""

    def __init__(self, server: TcpServer) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._server._accepted(cast(asyncio.Transport, transport))

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class TcpServer:
    """A listening TCP+TLS endpoint; ``handler(link)`` runs once per verified peer."""

    def __init__(self, config: TransportConfig, handler: Callable[[TcpLink], None]) -> None:
        self.config = config
        self._handler = handler
        self._ctx = server_context(config)
        self._ca = load_ca_bundle(config.ca) if config.verify_peer and config.ca else []
        self._loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        #: Every verified connection not yet closed.
        self.links: set[TcpLink] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        #: Connections refused (handshake failed or peer refused), for tests and metrics.
        self.refused = 0
        #: Of which: closed at once because ``max_half_open`` handshakes were in progress.
        self.m_refused_busy = 0

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        assert self._server is not None
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    def _accepted(self, transport: asyncio.Transport) -> None:
        if len(self._handshakes) >= self.config.max_half_open:
            # As on QUIC (max_half_open): a flood of connections that never
            # finish their handshake costs a socket each, not a task and a
            # TLS object each, and cannot starve the handshakes in progress.
            self.refused += 1
            self.m_refused_busy += 1
            transport.abort()
            return
        task = self._loop.create_task(self._handshake(transport))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, raw: asyncio.Transport) -> None:
        peer = raw.get_extra_info("peername")
        proto = _TcpProtocol()
        try:
            tls = await self._loop.start_tls(
                raw,
                proto,
                self._ctx,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except Exception as exc:  # ssl.SSLError, reset, handshake timeout
            self.refused += 1
            log.info(
                "transport: TCP handshake failed",
                extra=kv(peer=str(peer), err=str(exc) or type(exc).__name__),
            )
            raw.close()
            return
        if tls is None:  # pragma: no cover - only for a transport that cannot do TLS
            raw.close()
            return
        proto.connection_made(tls)
        try:
            verified = _verify(tls, self.config, self._ca, is_client=False)
        except PeerVerificationError as exc:
            self.refused += 1
            log.info("transport: TCP peer refused", extra=kv(peer=str(peer), err=exc.reason))
            tls.abort()
            return
        if tls.is_closing():
            return
        link = TcpLink(tls, self.config, verified, is_client=False)
        proto.link = link
        self.links.add(link)
        link._closed.add_done_callback(lambda _f: self.links.discard(link))
        try:
            self._handler(link)
        except Exception:
            log.exception("transport: link handler failed")
            link.close(1, "internal error")
            return
        link._start(proto.early)
        proto.early = []

    def close(self) -> None:
        """Stop listening and close every connection (GoAway sent)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handshakes):
            task.cancel()
        for link in list(self.links):
            link.close(0, "server shutting down")

    async def wait_closed(self) -> None:
        """Wait until the listener is closed."""
        if self._server is not None:
            await self._server.wait_closed()


async def serve_tcp(
    config: TransportConfig, host: str, port: int, on_link: Callable[[TcpLink], None]
) -> TcpServer:
    """Listen for TCP+TLS+yamux connections on ``host:port`` (port 0: ephemeral).

    ``on_link(link)`` is called once per connection whose peer passed
    verification, before any of its stream events; it usually sets
    ``link.on_event``. Unverified peers never reach it.

    Raises:
        ValueError: the configuration lacks a certificate, key or CA.
        OSError, ssl.SSLError: the files cannot be read or the address bound.
    """
    server = TcpServer(config, on_link)
    loop = asyncio.get_running_loop()
    server._server = await loop.create_server(
        lambda: _Accepting(server), host, port, reuse_address=True
    )
    return server


async def connect_tcp(
    config: TransportConfig, host: str, port: int, *, timeout: float | None = None
) -> TcpLink:
    """Dial ``host:port``, complete the TLS handshake and verify the server.

    Raises:
        HandshakeError: TLS failed or the server was refused (chain, name, role, pin).
        TimeoutError: ``timeout`` elapsed first.
        OSError: the address does not resolve or refuses the connection.
    """
    loop = asyncio.get_running_loop()
    ctx = client_context(config)
    ca = load_ca_bundle(config.ca) if config.verify_peer and config.ca else []
    proto = _TcpProtocol()
    server_hostname = config.server_name if config.verify_peer else None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                lambda: proto,
                host,
                port,
                ssl=ctx,
                server_hostname=server_hostname or host,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
    except ssl.SSLError as exc:
        raise HandshakeError(f"TLS handshake with {host}:{port} failed: {exc}") from None
    try:
        verified = _verify(transport, config, ca, is_client=True)
    except PeerVerificationError as exc:
        transport.abort()
        raise HandshakeError(exc.reason) from None
    link = TcpLink(transport, config, verified, is_client=True)
    proto.link = link
    link._start(proto.early)
    proto.early = []
    return link
