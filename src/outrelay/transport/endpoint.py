"""The thin asyncio layer: UDP sockets, timers and flushing around :class:`OrpConnection`.

Datagrams are fed to the connection, its events are dispatched at once to the
application (a callback, or a queue for simple users), and whatever any
connection has to send is flushed once per burst: the socket
(:mod:`outrelay.transport.udp`) reads every pending datagram per wake-up, and
only then does each connection that has something to say get one
``datagrams_to_send`` call, so the ACKs and forwarded data a burst causes on
all connections share packets. Output produced outside a burst (a task
writing) is flushed once per event-loop pass. There is no per-chunk
``StreamReader``: stream data goes straight from the event to whoever handles
it (for the relay, the other leg's :meth:`Link.send`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import cast

from aioquic.buffer import Buffer
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from outrelay.transport import events as ev
from outrelay.transport._aioquic_internals import encode_invalid_token_close, encode_retry
from outrelay.transport.admission import (
    Admission,
    AdmissionMeters,
    Decision,
    RetryTokens,
    Verdict,
)
from outrelay.transport.config import TransportConfig
from outrelay.transport.connection import NetworkAddress, OrpConnection
from outrelay.transport.errors import ConnectionClosedError, HandshakeError
from outrelay.transport.udp import UdpTransport, open_udp
from outrelay.transport.verify import load_ca_bundle

log = logging.getLogger("outrelay.transport")

#: A client's first datagram must be at least this large (RFC 9000 §14.1).
_MIN_INITIAL_SIZE = 1200
#: A client's first Initial carries a destination connection id at least this
#: long (RFC 9000 §7.2); after a Retry it is ours, which is that long too.
_MIN_INITIAL_DCID = 8
#: Seconds between two "under load" log lines.
_LOAD_LOG_INTERVAL = 10.0

EventHandler = Callable[["Link", ev.Event], None]


class Link:
    """One connection as the application sees it: :class:`OrpConnection` plus flushing.

    Events go to :attr:`on_event` if set, else into a queue read with
    :meth:`next_event`. Every method that produces output schedules a flush.
    """

    #: Which transport this is (:class:`~outrelay.transport.tcp.TcpLink` has ``"tcp"``).
    transport_name = "quic"

    def __init__(self, conn: OrpConnection, driver: _Driver, addr: NetworkAddress) -> None:
        self.conn = conn
        self.addr = addr
        #: Called synchronously with every event after the handshake verified.
        self.on_event: EventHandler | None = None
        #: Called with ICMP errors reported on a client's connected UDP socket
        #: (``ConnectionRefusedError``: nobody listens at the peer's port now).
        self.on_socket_error: Callable[[Exception], None] | None = None
        self._driver = driver
        self._queue: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._closed = driver.loop.create_future()
        self._verified = driver.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._cids: set[bytes] = set()
        #: Server side: counted as a handshake in progress by the admission policy.
        self._half_open = False

    # -- identity ---------------------------------------------------------

    @property
    def peer_uri(self) -> str | None:
        """First URI SAN of the verified peer leaf (``None`` before verification)."""
        peer = self.conn.peer
        return None if peer is None else peer.uri

    @property
    def closed(self) -> bool:
        """True once the connection is over."""
        return self._closed.done()

    # -- application API (each schedules a flush) -------------------------

    def open_stream(self) -> int:
        """Open a bidirectional stream; see :meth:`OrpConnection.open_stream`."""
        stream_id = self.conn.open_stream()
        self._driver.mark(self)
        return stream_id

    def streams_available(self) -> int:
        """Streams that can be opened now; see :meth:`OrpConnection.streams_available`."""
        return self.conn.streams_available()

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue data on a stream; see :meth:`OrpConnection.send` (same errors)."""
        self.conn.send(stream_id, data, end_stream)
        self._driver.mark(self)

    def send_buffered(self, stream_id: int) -> int:
        """Unacknowledged bytes queued on a stream."""
        return self.conn.send_buffered(stream_id)

    def grant(self, stream_id: int, n: int) -> int:
        """Report ``n`` bytes consumed; see :meth:`OrpConnection.grant`."""
        granted = self.conn.grant(stream_id, n)
        if granted:
            self._driver.mark(self)
        return granted

    def unconsumed(self, stream_id: int) -> int:
        """Bytes delivered on a stream and not yet granted back."""
        return self.conn.unconsumed(stream_id)

    def release(self, stream_id: int) -> None:
        """Stop reading a stream and return its credit."""
        self.conn.release(stream_id)
        self._driver.mark(self)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """RESET_STREAM our sending side."""
        self.conn.reset_stream(stream_id, error_code)
        self._driver.mark(self)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """STOP_SENDING the peer's side and stop reading it."""
        self.conn.stop_stream(stream_id, error_code)
        self._driver.mark(self)

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close the connection (CONNECTION_CLOSE); :meth:`wait_closed` to await the end."""
        self.conn.close(error_code, reason)
        self._driver.mark(self)

    async def wait_closed(self) -> ev.ConnectionClosed:
        """Wait until the connection is over; return why."""
        return await asyncio.shield(self._closed)

    async def next_event(self) -> ev.Event:
        """The next event when no :attr:`on_event` callback is set.

        Raises:
            ConnectionClosedError: the connection closed and all events were read.
        """
        if self._queue.empty() and self._closed.done():
            raise ConnectionClosedError("connection is closed")
        return await self._queue.get()

    # -- driver side ------------------------------------------------------

    def _dispatch(self) -> None:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            kind = type(event)
            if kind is ev.ConnectionIdIssued:
                self._driver.route(cast(ev.ConnectionIdIssued, event).connection_id, self)
                continue
            if kind is ev.ConnectionIdRetired:
                self._driver.unroute(cast(ev.ConnectionIdRetired, event).connection_id)
                continue
            if kind is ev.HandshakeVerified:
                self._driver.verified(self)
                if not self._verified.done():
                    self._verified.set_result(event)
            elif kind is ev.ConnectionClosed:
                self._finish(cast(ev.ConnectionClosed, event))
            callback = self.on_event
            if callback is None:
                self._queue.put_nowait(event)
            else:
                try:
                    callback(self, event)
                except Exception:
                    log.exception("transport: event handler failed; closing the connection")
                    conn.close(1, "internal error")
        self._driver.mark(self)

    def _finish(self, event: ev.ConnectionClosed) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._verified.done():
            self._verified.set_exception(HandshakeError(event.reason, error_code=event.error_code))
            self._verified.exception()  # retrieved: a server-side link may never be awaited
        if not self._closed.done():
            self._closed.set_result(event)
        self._driver.forget(self)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.conn.handle_timer(self._driver.loop.time())
        self._dispatch()

    def _rearm(self) -> None:
        # aioquic's next deadline moves with nearly every packet (loss timer,
        # idle timer). Rescheduling the loop timer each time costs more than
        # an early wake-up, so a pending timer that fires at or before the new
        # deadline is kept: handle_timer does nothing before its time, and the
        # flush after it re-arms for the real deadline.
        at = None if self._closed.done() else self.conn.get_timer()
        timer = self._timer
        if timer is not None:
            if at is not None and self._timer_at is not None and self._timer_at <= at:
                return
            if at is None and not self._closed.done():
                return  # an early wake-up is harmless; avoid the cancel
            timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._driver.loop.call_at(at, self._on_timer)


class _Driver:
    """The UDP socket shared by a server's (or one client's) links."""

    def __init__(self, config: TransportConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.transport: UdpTransport | None = None
        self.links: dict[bytes, Link] = {}
        #: Links with output to flush, in the order they were marked: a link the
        #: application wrote to during a burst comes before the link whose
        #: datagram caused it (marked after its events), so forwarded data
        #: leaves before that link's ACK bookkeeping runs.
        self._dirty: dict[Link, None] = {}
        self._flush_scheduled = False
        self._in_burst = False  # reading datagrams: burst_done flushes
        self._lost: asyncio.Future[None] = self.loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(None)

    def mark(self, link: Link) -> None:
        self._dirty[link] = None
        if not self._flush_scheduled and not self._in_burst:
            self._flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        if self._flush_scheduled:
            self.flush()

    def burst_done(self) -> None:
        """The socket read everything pending: flush what the burst caused, once."""
        self._in_burst = False
        if self._dirty:
            self.flush()

    def flush(self) -> None:
        """Send what every marked link has to send, then re-arm its timer."""
        self._flush_scheduled = False
        self._in_burst = False
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        transport = self.transport
        alive = transport is not None and not transport.is_closing()
        now = self.loop.time()
        for link in dirty:
            if alive:
                datagrams = link.conn.datagrams_to_send(now)
                if datagrams:
                    assert transport is not None
                    transport.send_all(datagrams)
            link._rearm()

    def route(self, cid: bytes, link: Link) -> None:
        self.links[cid] = link
        link._cids.add(cid)

    def unroute(self, cid: bytes) -> None:
        link = self.links.pop(cid, None)
        if link is not None:
            link._cids.discard(cid)

    def forget(self, link: Link) -> None:
        for cid in link._cids:
            if self.links.get(cid) is link:
                del self.links[cid]
        link._cids.clear()

    def verified(self, link: Link) -> None:
        """Hook: the link's peer passed verification."""

    def error_received(self, exc: Exception) -> None:
        log.debug("transport: UDP error %s", exc)


class Server(_Driver):
    """A listening QUIC endpoint; ``handler(link)`` runs once per verified peer.

    An Initial that matches no connection goes through :attr:`admission`
    (``admission.py``) before any state is created for it: it is accepted,
    answered with a Retry or an INVALID_TOKEN close (stateless), or dropped.
    """

    def __init__(
        self,
        config: TransportConfig,
        handler: Callable[[Link], None],
        *,
        meters: AdmissionMeters | None = None,
    ) -> None:
        super().__init__(config)
        self._handler = handler
        self._ca = load_ca_bundle(config.ca) if config.verify_peer and config.ca else None
        self._quic_config = config.quic_configuration(is_client=False)
        self.meters = meters or AdmissionMeters()
        #: The address-validation policy: Retry mode and the half-open count.
        self.admission = Admission(
            config.retry,
            retry_threshold=config.retry_threshold,
            max_half_open=config.max_half_open,
            tokens=RetryTokens(lifetime=config.retry_token_lifetime),
            meters=self.meters,
        )
        #: Every connection not yet closed, verified or not.
        self.connections: set[Link] = set()
        self._load_logged_at: float | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        assert self.transport is not None
        sockname = self.transport.get_extra_info("sockname")
        return sockname[0], sockname[1]

    @property
    def port(self) -> int:
        """The bound UDP port."""
        return self.address[1]

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self._in_burst = True
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._quic_config.connection_id_length
            )
        except ValueError:
            return
        link = self.links.get(header.destination_cid)
        if link is None:
            link = self._new_link(data, addr, header)
            if link is None:
                return
        link.conn.receive_datagram(data, addr, self.loop.time())
        link._dispatch()

    def _new_link(self, data: bytes, addr: NetworkAddress, header: QuicHeader) -> Link | None:
        """A connection for a datagram that matches none, or ``None`` (answered or dropped).

        Cheap rejects first: anything but a full-size client Initial of a
        supported version costs a dictionary lookup and a header parse.
        """
        if len(data) < _MIN_INITIAL_SIZE or header.version is None:
            return None  # RFC 9000 §5.2.2 / §14.1: too small to start anything
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            return None
        if header.version not in self._quic_config.supported_versions:
            assert self.transport is not None
            self.transport.sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self._quic_config.supported_versions,
                ),
                addr,
            )
            return None
        if (
            header.packet_type != QuicPacketType.INITIAL
            or len(header.destination_cid) < _MIN_INITIAL_DCID
        ):
            return None
        now = self.loop.time()
        decision = self.admission.initial(
            version=header.version,
            addr=addr,
            dcid=header.destination_cid,
            token=header.token,
            now=now,
        )
        if decision.verdict is not Verdict.ACCEPT:
            self._stateless_reply(decision, header, addr, now)
            return None
        conn = OrpConnection(
            self.config,
            is_client=False,
            original_destination_connection_id=decision.original_dcid,
            retry_source_connection_id=decision.retry_scid,
            ca_certs=self._ca,
        )
        link = Link(conn, self, addr)
        link._half_open = True
        self.admission.opened()
        self.route(header.destination_cid, link)
        self.route(conn.host_cid, link)
        self.connections.add(link)
        self.meters.connections.set(len(self.connections))
        return link

    def _stateless_reply(
        self, decision: Decision, header: QuicHeader, addr: NetworkAddress, now: float
    ) -> None:
        """Carry out a RETRY or INVALID_TOKEN verdict; a DROP sends nothing."""
        assert header.version is not None and self.transport is not None
        if decision.verdict is Verdict.RETRY:
            assert decision.retry_scid is not None
            self.transport.sendto(
                encode_retry(
                    version=header.version,
                    client_scid=header.source_cid,
                    client_dcid=header.destination_cid,
                    retry_scid=decision.retry_scid,
                    token=decision.token,
                ),
                addr,
            )
            if self.admission.under_load and (
                self._load_logged_at is None or now - self._load_logged_at >= _LOAD_LOG_INTERVAL
            ):
                self._load_logged_at = now
                log.warning(
                    "transport: %d handshakes in progress: answering new Initials with Retry",
                    self.admission.half_open,
                )
        elif decision.verdict is Verdict.INVALID_TOKEN:
            log.debug("transport: Initial from %s refused: %s", addr, decision.reason)
            self.transport.sendto(
                encode_invalid_token_close(
                    version=header.version,
                    client_scid=header.source_cid,
                    client_dcid=header.destination_cid,
                ),
                addr,
            )

    def _settle(self, link: Link) -> None:
        if link._half_open:
            link._half_open = False
            self.admission.settled()

    def verified(self, link: Link) -> None:
        self._settle(link)
        try:
            self._handler(link)
        except Exception:
            log.exception("transport: connection handler failed; closing the connection")
            link.conn.close(1, "internal error")

    def forget(self, link: Link) -> None:
        super().forget(link)
        self._settle(link)
        self.connections.discard(link)
        self.meters.connections.set(len(self.connections))

    def close(self) -> None:
        """Close every connection (CONNECTION_CLOSE sent) and then the socket."""
        for link in list(self.connections):
            link.close(0, "server shutting down")
        self.flush()
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed."""
        await asyncio.shield(self._lost)


class _Client(_Driver):
    """The socket of one outgoing connection."""

    link: Link

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self._in_burst = True
        self.link.conn.receive_datagram(data, addr, self.loop.time())
        self.link._dispatch()

    def error_received(self, exc: Exception) -> None:
        super().error_received(exc)
        link = getattr(self, "link", None)
        if link is None:
            return
        if isinstance(exc, ConnectionRefusedError) and not link._verified.done():
            # Nothing listens there: fail the dial now, not at the handshake timeout.
            link._verified.set_exception(HandshakeError(f"connection refused: {exc}"))
            return
        if link.on_socket_error is not None:
            link.on_socket_error(exc)

    def forget(self, link: Link) -> None:
        super().forget(link)
        # The connection is over: its socket goes with it, once the last flush ran.
        self.loop.call_soon(self._close_transport)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(
    host: str,
    port: int,
    config: TransportConfig,
    handler: Callable[[Link], None],
    *,
    meters: AdmissionMeters | None = None,
) -> Server:
    """Listen for QUIC connections on ``host:port`` (port 0: ephemeral).

    ``handler(link)`` is called once per connection whose peer passed
    verification, before any of its stream events; it usually sets
    ``link.on_event``. Unverified peers never reach it. New Initials go
    through the address-validation policy of ``config`` (``retry``,
    ``retry_threshold``, ``max_half_open``); ``meters`` receive its counts.

    Raises:
        ValueError: the configuration lacks a certificate or CA.
        OSError: the address cannot be bound.
    """
    server = Server(config, handler, meters=meters)
    server.transport = await open_udp(server, local_addr=(host, port))
    if config.recv_buffer:
        sock = server.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config.recv_buffer)
        except OSError as exc:  # best effort: the kernel's default still works
            log.debug("transport: SO_RCVBUF %d refused: %s", config.recv_buffer, exc)
    return server


async def connect(
    host: str, port: int, config: TransportConfig, *, timeout: float | None = None
) -> Link:
    """Dial ``host:port``, complete the handshake and verify the server.

    Raises:
        HandshakeError: the connection closed before it was verified (refused
            certificate, ALPN mismatch, idle timeout...).
        TimeoutError: ``timeout`` elapsed first.
        OSError: the address does not resolve.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"transport: {host!r} does not resolve")
    family, _, _, _, addr = infos[0]
    driver = _Client(config)
    transport = await open_udp(driver, remote_addr=(str(addr[0]), int(addr[1])), family=family)
    driver.transport = transport
    conn = OrpConnection(config, is_client=True)
    peer_addr: NetworkAddress = transport.get_extra_info("peername") or addr
    link = Link(conn, driver, peer_addr)
    driver.link = link
    conn.connect(peer_addr, loop.time())
    driver.mark(link)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(link._verified)
    except BaseException:
        if not link.closed:
            link.close(0, "")
            driver.flush()
        transport.close()
        raise
    return link
