"""The asyncio shell of one relay session: :class:`AgentProtocol` driven by a link.

A :class:`Session` owns one link (``outrelay.transport.link.StreamLink``: a
QUIC :class:`outrelay.transport.Link` or a TCP+TLS+yamux
:class:`outrelay.transport.tcp.TcpLink`; the session does not care which). Transport
events go through :class:`AgentProtocol` and come out as its events, which
the session turns into future results (HELLO_ACK, REGISTER_ACK, a consumer
stream opened or rejected) and into calls on each stream's
:class:`RelayStreamTransport`. It never blocks in the event callback.

Resume: when the session ends, or the relay resets one of its streams with
0x101 (SPLICE_ABORTED: the peer's connection died), an established stream
is *detached* instead of failed, and its owner (:class:`StreamOwner`, the
:class:`outrelay.Agent`) resumes it on this or the next session
(:meth:`Session.resume`). A relay that died is noticed early through ICMP
"port unreachable" on the connected UDP socket (refusals that go on for
``REFUSED_GRACE`` seconds close the connection) and, while the session
carries streams, by a liveness probe: after ``PROBE_IDLE`` seconds without
any sign of the relay a PING goes out on the control stream, and nothing
heard ``PROBE_TIMEOUT`` seconds after it drops the session (a relay
restarted on the same address silently ignores the old connection, so the
QUIC idle timeout would be the only other signal).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from outrelay.agent import events as ev
from outrelay.agent.config import RELAY_ROLES
from outrelay.agent.core import AgentProtocol, Phase, Role
from outrelay.agent.errors import (
    HandshakeFailed,
    NotConnected,
    RegisterFailed,
    RegisterRefused,
    StreamFailed,
    StreamLost,
    StreamRejected,
)
from outrelay.agent.stream import RelayStreamTransport, open_stream_pair
from outrelay.identity.roles import RoleRefused, require_role
from outrelay.observe import REGISTRY, kv
from outrelay.transport import (
    ConnectionClosed,
    SendCapacityAvailable,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
    TransportError,
)
from outrelay.transport import events as tev
from outrelay.transport.link import StreamLink

log = logging.getLogger("outrelay.agent")

#: QUIC application error code we use for stream resets and STOP_SENDING.
STREAM_ERROR = 0
#: The relay's code for "the other leg's connection died" (relay ``SPLICE_ABORTED``): resume.
SPLICE_ABORTED = 0x101
#: Seconds of ICMP refusals (no other sign of life) after which the relay is taken as dead.
REFUSED_GRACE = 0.3
#: Seconds without any event from the relay before a liveness PING (streams open only).
PROBE_IDLE = 1.0
#: Seconds a liveness PING may go unanswered (nothing at all heard) before the session drops.
PROBE_TIMEOUT = 2.5


class StreamOwner(Protocol):
    """Who keeps streams alive across sessions (the :class:`outrelay.Agent`)."""

    def stream_started(self, transport: RelayStreamTransport) -> None:
        """A stream is about to carry application bytes: give it positions and a ring.

        Called before its first byte (a consumer's early data counts in SentPos).
        """

    def stream_established(self, transport: RelayStreamTransport) -> None:
        """The stream is open end to end: a lost relay leg is resumed from now on."""

    def checkpoint_received(self, event: ev.CheckpointReceived) -> None:
        """The peer's STREAM_CHECKPOINT arrived."""


IncomingCallback = Callable[
    ["Session", ev.IncomingStreamReceived, asyncio.StreamReader, asyncio.StreamWriter], None
]

_opened = REGISTRY.counter("agent_streams_opened")
_rejected = REGISTRY.counter("agent_streams_rejected")
_incoming = REGISTRY.counter("agent_streams_incoming")


class Session:
    """One relay session. Create with :meth:`start` (HELLO / HELLO_ACK done)."""

    def __init__(
        self,
        link: StreamLink,
        relay: str,
        proto: AgentProtocol,
        on_incoming: IncomingCallback,
        *,
        high_water: int,
        owner: StreamOwner | None = None,
    ) -> None:
        self.link = link
        self.relay = relay
        #: ``"quic"`` or ``"tcp"``: what carries this session.
        self.transport = link.transport_name
        self.proto = proto
        self._on_incoming = on_incoming
        self._high_water = high_water
        self._owner = owner
        self._refused_since: float | None = None
        self._dropping = False
        self._loop = asyncio.get_running_loop()
        self._heard = self._loop.time()
        self._ping_at: float | None = None
        self._probe: asyncio.TimerHandle | None = self._loop.call_later(PROBE_IDLE, self._on_probe)
        self._streams: dict[int, RelayStreamTransport] = {}
        self._openers: dict[int, asyncio.Future[None]] = {}
        self._hello: asyncio.Future[None] = self._loop.create_future()
        self._registers: dict[str, list[asyncio.Future[str]]] = {}
        self._closed: asyncio.Future[str] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        link.on_event = self._on_link_event
        link.on_socket_error = self._on_socket_error
        if link.closed:
            self._lost("connection closed during the handshake")

    # -- life cycle -------------------------------------------------------

    @classmethod
    async def start(
        cls,
        link: StreamLink,
        relay: str,
        proto: AgentProtocol,
        on_incoming: IncomingCallback,
        *,
        high_water: int,
        owner: StreamOwner | None = None,
    ) -> Session:
        """Open the control stream, send HELLO and wait for HELLO_ACK.

        Raises:
            HandshakeFailed: no HELLO_ACK (timeout, wrong frame, connection closed).
        """
        session = cls(link, relay, proto, on_incoming, high_water=high_water, owner=owner)
        try:
            if session.closed:
                raise HandshakeFailed(f"agent: relay {relay} closed the connection")
            # The transport already checked the role (TransportConfig.peer_roles);
            # checked again here so no link ever gets a HELLO from a non-relay.
            try:
                require_role(link.peer_uri, RELAY_ROLES, peer="server")
            except RoleRefused as exc:
                raise HandshakeFailed(f"agent: relay {relay} refused: {exc}") from None
            qid = link.open_stream()
            session.send(qid, proto.hello(qid, session._loop.time()))
            session._rearm()
            await session._hello
        except BaseException:
            await session.close()
            raise
        return session

    @property
    def closed(self) -> bool:
        """True once the connection is over."""
        return self._closed.done()

    async def wait_closed(self) -> str:
        """Wait until the connection is over; return why."""
        return await asyncio.shield(self._closed)

    async def close(self, reason: str = "agent stopping") -> None:
        """Close the connection (streams see ConnectionResetError) and wait for the end."""
        if not self.link.closed:
            self.link.close(0, reason)
            try:
                async with asyncio.timeout(2.0):
                    await self.link.wait_closed()
            except TimeoutError:
                pass
        self._lost(reason)

    # -- operations -------------------------------------------------------

    async def register(self, name: str, local_addr: str = "") -> str:
        """REGISTER ``name`` and wait for REGISTER_ACK; returns its service id.

        Raises:
            RegisterFailed: no REGISTER_ACK within the register timeout.
            NotConnected: the session ended first.
        """
        if self.closed:
            raise NotConnected("agent: relay session is closed")
        fut: asyncio.Future[str] = self._loop.create_future()
        self._registers.setdefault(name, []).append(fut)
        self.send(self.control_qid, self.proto.register(name, local_addr, self._loop.time()))
        self._rearm()
        return await fut

    @property
    def control_qid(self) -> int:
        qid = self.proto.control_qid
        assert qid is not None
        return qid

    async def open(
        self, service: str, *, method: str = "", early_data: bool = False
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a consumer stream to ``service``; wait until it is established.

        With ``early_data`` it does not wait: OPEN_STREAM is queued (it
        leaves with the first write of this loop iteration, see
        :meth:`RelayStreamTransport.send_head`) and the relay's answer comes
        later; a reject or a stream that ends without an answer makes the
        next read or ``drain`` raise StreamRejected / StreamFailed.

        Raises:
            StreamRejected: the relay answered with STREAM_REJECT (code, reason).
            StreamFailed: the stream ended without an answer.
            NotConnected: the session ended first.
        """
        if self.closed:
            raise NotConnected("agent: relay session is closed")
        qid = self.link.open_stream()
        transport = RelayStreamTransport(
            self,
            qid,
            {"peername": self.link.addr, "service": service, "method": method},
            high_water=self._high_water,
        )
        reader, writer = open_stream_pair(transport)
        self._streams[qid] = transport
        frame = self.proto.open_stream(qid, service, self._loop.time(), method=method)
        transport.set_extra("stream_id", self.proto.stream_id(qid))
        if self._owner is not None:
            self._owner.stream_started(transport)
        self._rearm()
        if early_data:
            transport.send_head(frame)
        else:
            fut: asyncio.Future[None] = self._loop.create_future()
            self._openers[qid] = fut
            self.send(qid, frame)
            try:
                await fut
            except BaseException:
                transport.abort()
                raise
            finally:
                self._openers.pop(qid, None)
        _opened.inc()
        return reader, writer

    def accept(self, qid: int) -> None:
        """Answer an incoming stream with STREAM_ACCEPT."""
        self.send(qid, self.proto.accept_stream(qid))
        transport = self._streams.get(qid)
        if transport is not None:
            if self._owner is not None:
                self._owner.stream_started(transport)
            self._established(transport)

    def resume(self, transport: RelayStreamTransport) -> None:
        """Open a fresh stream and send STREAM_RESUME for a detached ``transport``.

        The echo (or a reject) arrives later; see :meth:`_stream_resumed`.

        Raises:
            NotConnected: the session is closed.
        """
        if self.closed or self.link.closed:
            raise NotConnected("agent: relay session is closed")
        assert transport.state is not None
        qid = self.link.open_stream()
        stream_id, sent, recv = transport.state.resume_request()
        frame = self.proto.resume_stream(qid, stream_id, sent, recv)
        transport.attach(self, qid)
        self._streams[qid] = transport
        self.send(qid, frame)
        log.debug(
            "agent: resuming stream",
            extra=kv(relay=self.relay, stream_id=f"{stream_id:#x}", sent=sent, recv=recv),
        )

    def send_checkpoint(self, stream_id: int, sent: int, recv: int) -> None:
        """STREAM_CHECKPOINT on the control stream (dropped when the session is over)."""
        if not self.closed and not self.link.closed:
            self.send(self.control_qid, self.proto.checkpoint(stream_id, sent, recv))

    def reject(self, qid: int, code: int, reason: str) -> None:
        """Answer an incoming stream with STREAM_REJECT and FIN; the stream ends."""
        frame = self.proto.reject_stream(qid, code, reason)
        transport = self._streams.get(qid)
        self.send(qid, frame, end_stream=True)
        if transport is not None:
            transport.lost(StreamFailed(f"rejected: {code} {reason}"))
        self.release(qid)  # nothing more is read; no STOP_SENDING needed

    # -- used by RelayStreamTransport ------------------------------------

    def send(self, qid: int, data: bytes, end_stream: bool = False) -> None:
        """Queue bytes on a stream; a closed stream or connection drops them.

        A consumer stream still waiting for the relay's answer stays open when
        its sending side is gone (the relay stops reading a stream it
        rejects, maybe before the reject frame reaches us): early bytes are
        dropped and the answer decides.
        """
        try:
            self.link.send(qid, data, end_stream)
        except TransportError as exc:
            if self._answer_pending(qid):
                return
            transport = self._streams.get(qid)
            if transport is not None:
                transport.lost(ConnectionResetError(f"relay stream closed: {exc}"))

    def send_buffered(self, qid: int) -> int:
        return 0 if self.link.closed else self.link.send_buffered(qid)

    def grant_all(self, qid: int) -> None:
        if not self.link.closed:
            self.link.grant(qid, self.link.unconsumed(qid))

    def stop_reading(self, qid: int) -> None:
        if not self.link.closed:
            self.link.stop_stream(qid, STREAM_ERROR)

    def release(self, qid: int) -> None:
        if not self.link.closed:
            self.link.release(qid)

    def abort_stream(self, qid: int, code: int = STREAM_ERROR) -> None:
        if not self.link.closed:
            try:
                self.link.reset_stream(qid, code)
                self.link.stop_stream(qid, code)
            except TransportError:
                pass

    def stream_detached(self, qid: int, transport: RelayStreamTransport) -> None:
        """``transport`` left ``qid`` to be resumed elsewhere: retire the old stream."""
        if self._streams.get(qid) is transport:
            del self._streams[qid]
        self.proto.close_stream(qid)
        self.abort_stream(qid, SPLICE_ABORTED)

    def stream_finished(self, qid: int, transport: RelayStreamTransport) -> None:
        if self._streams.get(qid) is transport:
            del self._streams[qid]
        self.proto.forget_stream(qid)
        opener = self._openers.get(qid)
        if opener is not None and not opener.done():
            opener.set_exception(StreamFailed("agent: stream ended before the relay answered"))

    # -- transport events -------------------------------------------------

    def _on_link_event(self, link: StreamLink, event: tev.Event) -> None:
        now = self._loop.time()
        kind = type(event)
        if kind is StreamDataReceived:
            assert isinstance(event, StreamDataReceived)
            qid = event.stream_id
            self._dispatch(self.proto.receive(qid, event.data, event.end_stream, now))
            # Credit for what arrived goes back here, once per event (held bytes too).
            transport = self._streams.get(qid)
            if transport is None or transport.is_reading():
                self.grant_all(qid)
        elif kind is SendCapacityAvailable:
            assert isinstance(event, SendCapacityAvailable)
            transport = self._streams.get(event.stream_id)
            if transport is not None:
                transport.send_capacity(event.buffered)
        elif kind is StreamReset:
            assert isinstance(event, StreamReset)
            self._dispatch(self.proto.stream_reset(event.stream_id, event.error_code))
        elif kind is StopSendingReceived:
            assert isinstance(event, StopSendingReceived)
            if event.stream_id == self.proto.control_qid:
                self._fatal("relay stopped reading the control stream")
            transport = self._streams.get(event.stream_id)
            # The relay sends RESET_STREAM and STOP_SENDING; either one starts the resume.
            if self._detach_spliced(transport, event.error_code, now):
                self._rearm()
                return
            # A relay rejecting OPEN_STREAM may stop reading before the reject
            # frame arrives: keep reading until the answer (or FIN) comes.
            if transport is not None and not self._answer_pending(event.stream_id):
                transport.lost(ConnectionResetError("relay stopped reading the stream"))
        elif kind is ConnectionClosed:
            assert isinstance(event, ConnectionClosed)
            self._lost(event.reason or f"connection closed (code {event.error_code})")
            return
        self._refused_since = None  # the relay is alive
        self._heard = now
        self._rearm()

    def _on_probe(self) -> None:
        """Every ``PROBE_IDLE`` s: is the relay still there? (see the module docstring)"""
        self._probe = None
        if self.closed:
            return
        now = self._loop.time()
        if self._ping_at is not None and self._heard > self._ping_at:
            self._ping_at = None
        if self._ping_at is not None and now - self._ping_at >= PROBE_TIMEOUT:
            self._fatal(f"relay silent for {now - self._heard:.1f} s (no PONG)")
            return
        busy = any(t.established for t in self._streams.values())
        if (
            busy
            and self._ping_at is None
            and now - self._heard >= PROBE_IDLE
            and not self._registers_pending()
            and self.proto.established
        ):
            self._ping_at = now
            self.send(self.control_qid, self.proto.ping())
        self._probe = self._loop.call_later(PROBE_IDLE / 2, self._on_probe)

    def _detach_spliced(
        self, transport: RelayStreamTransport | None, error_code: int | None, now: float
    ) -> bool:
        """SPLICE_ABORTED on a resumable stream: detach it to be resumed; True if so."""
        return (
            transport is not None
            and error_code == SPLICE_ABORTED
            and transport.can_resume
            and transport.detach(now, "the peer's relay connection was lost")
        )

    def _answer_pending(self, qid: int) -> bool:
        """True while consumer stream ``qid`` waits for the relay's answer (OPENING)."""
        return self.proto.phase(qid) is Phase.OPENING

    def _registers_pending(self) -> bool:
        # The relay reads nothing more on the control stream while a REGISTER
        # waits for the controller: a PING would not be answered in time.
        return any(not f.done() for futs in self._registers.values() for f in futs)

    def _on_socket_error(self, exc: Exception) -> None:
        """An ICMP error on the UDP socket: the relay may be gone (process killed)."""
        if not isinstance(exc, ConnectionRefusedError) or self.link.closed:
            return
        now = self._loop.time()
        if self._refused_since is None:
            self._refused_since = now
        elif now - self._refused_since >= REFUSED_GRACE:
            self._fatal("relay unreachable (ICMP port unreachable)")

    def _dispatch(self, events: list[ev.Event]) -> None:
        for event in events:
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event)
            else:
                log.debug("agent: event", extra=kv(event=repr(event)))

    # -- protocol events --------------------------------------------------

    def _hello_acked(self, event: ev.HelloAcknowledged) -> None:
        if not self._hello.done():
            self._hello.set_result(None)

    def _hello_timed_out(self, event: ev.HelloTimedOut) -> None:
        self._fatal(f"no HELLO_ACK within {self.proto.hello_timeout:g} s")

    def _violated(self, event: ev.ProtocolViolated) -> None:
        self._fatal(event.reason)

    def _registered(self, event: ev.ServiceRegistered) -> None:
        futs = self._registers.get(event.name)
        if futs:
            fut = futs.pop(0)
            if not fut.done():
                fut.set_result(event.service_id)

    def _register_rejected(self, event: ev.RegisterRejected) -> None:
        futs = self._registers.get(event.name)
        if futs:
            fut = futs.pop(0)
            if not fut.done():
                fut.set_exception(
                    RegisterRefused(
                        f"agent: REGISTER {event.name!r} refused by the relay: "
                        f"{event.code} {event.reason}"
                    )
                )

    def _register_timed_out(self, event: ev.RegisterTimedOut) -> None:
        futs = self._registers.get(event.name)
        if futs:
            fut = futs.pop(0)
            if not fut.done():
                fut.set_exception(
                    RegisterFailed(
                        f"agent: REGISTER {event.name!r}: no REGISTER_ACK within "
                        f"{self.proto.register_timeout:g} s (the relay sends none when the "
                        "controller refuses the registration)"
                    )
                )

    def _established(self, transport: RelayStreamTransport) -> None:
        transport.established = True
        if self._owner is not None:
            self._owner.stream_established(transport)

    def _checkpoint(self, event: ev.CheckpointReceived) -> None:
        if self._owner is not None:
            self._owner.checkpoint_received(event)

    def _stream_resumed(self, event: ev.StreamResumed) -> None:
        transport = self._streams.get(event.qid)
        if transport is None:
            self.abort_stream(event.qid)
            return
        transport.resumed(event.my_position, event.peer_ack_position, self._loop.time())

    def _resume_rejected(self, event: ev.ResumeRejected) -> None:
        transport = self._streams.get(event.qid)
        self.release(event.qid)
        if transport is not None:
            transport.lost(StreamLost(f"the relay refused the resume: {event.code} {event.reason}"))

    def _stream_opened(self, event: ev.StreamOpened) -> None:
        transport = self._streams.get(event.qid)
        if transport is not None:
            self._established(transport)
        fut = self._openers.get(event.qid)
        if fut is not None and not fut.done():
            fut.set_result(None)
        if event.cause != "ready":
            log.debug("agent: stream open without STREAM_READY", extra=kv(cause=event.cause))

    def _stream_rejected(self, event: ev.StreamRejected) -> None:
        _rejected.inc()
        fut = self._openers.get(event.qid)
        if fut is not None and not fut.done():
            fut.set_exception(StreamRejected(event.code, event.reason))
        transport = self._streams.get(event.qid)
        if transport is not None:
            transport.lost(StreamRejected(event.code, event.reason))
            self.send(event.qid, b"", end_stream=True)
            self.release(event.qid)

    def _stream_aborted(self, event: ev.StreamAborted) -> None:
        failed = StreamFailed(f"agent: stream failed: {event.reason}")
        fut = self._openers.get(event.qid)
        if fut is not None and not fut.done():
            fut.set_exception(failed)
        transport = self._streams.get(event.qid)
        if self._detach_spliced(transport, event.error_code, self._loop.time()):
            return
        if transport is not None:
            if transport.established and transport.state is not None:
                transport.lost(StreamLost(event.reason))
            elif not transport.established and self.proto.role(event.qid) is Role.CONSUMER:
                transport.lost(failed)  # no answer to OPEN_STREAM (early-data path)
            else:
                transport.lost(ConnectionResetError(event.reason))
        else:
            log.warning("agent: incoming stream dropped", extra=kv(reason=event.reason))
            self.proto.forget_stream(event.qid)
        self.abort_stream(event.qid)

    def _incoming_stream(self, event: ev.IncomingStreamReceived) -> None:
        _incoming.inc()
        transport = RelayStreamTransport(
            self,
            event.qid,
            {
                "peername": self.link.addr,
                "service": event.service,
                "method": event.method,
                "peer_uri": event.source_uri,
                "stream_id": event.stream_id,
            },
            high_water=self._high_water,
        )
        reader, writer = open_stream_pair(transport)
        self._streams[event.qid] = transport
        self._on_incoming(self, event, reader, writer)

    def _data(self, event: ev.DataReceived) -> None:
        transport = self._streams.get(event.qid)
        if transport is not None:
            transport.feed_data(event.data)

    def _ended(self, event: ev.StreamEnded) -> None:
        transport = self._streams.get(event.qid)
        if transport is not None:
            transport.feed_eof()

    # -- internals --------------------------------------------------------

    def _fatal(self, reason: str) -> None:
        if self._dropping:
            return
        self._dropping = True
        log.warning("agent: dropping relay session", extra=kv(relay=self.relay, reason=reason))
        if not self.link.closed:
            self.link.close(0, reason[:200])
        # Do not wait for the closing handshake: streams can be resumed elsewhere now.
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        if self._closed.done():
            return
        self._closed.set_result(reason)
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = NotConnected(f"agent: relay session lost: {reason}")
        if not self._hello.done():
            self._hello.set_exception(HandshakeFailed(f"agent: relay {self.relay}: {reason}"))
        for futs in self._registers.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(error)
        self._registers.clear()
        for opener in self._openers.values():
            if not opener.done():
                opener.set_exception(error)
        now = self._loop.time()
        for transport in list(self._streams.values()):
            if self._answer_pending(transport.qid):  # an early-data open: no answer will come
                why = f"agent: relay session lost before the answer: {reason}"
                transport.lost(StreamFailed(why))
                continue
            # Established streams wait to be resumed on the next session.
            transport.detach(now, f"relay session lost: {reason}")
        self._streams.clear()
        # Futures nobody awaits any more must not log "exception never retrieved".
        for done in [self._hello, *self._openers.values()]:
            if done.done() and not done.cancelled():
                done.exception()

    def _rearm(self) -> None:
        at = None if self.closed else self.proto.next_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._dispatch(self.proto.handle_timer(self._loop.time()))
        self._rearm()


_HANDLERS: dict[type, Callable[[Session, Any], None]] = {
    ev.HelloAcknowledged: Session._hello_acked,
    ev.HelloTimedOut: Session._hello_timed_out,
    ev.ProtocolViolated: Session._violated,
    ev.ServiceRegistered: Session._registered,
    ev.RegisterTimedOut: Session._register_timed_out,
    ev.RegisterRejected: Session._register_rejected,
    ev.StreamOpened: Session._stream_opened,
    ev.StreamRejected: Session._stream_rejected,
    ev.StreamAborted: Session._stream_aborted,
    ev.IncomingStreamReceived: Session._incoming_stream,
    ev.DataReceived: Session._data,
    ev.StreamEnded: Session._ended,
    ev.CheckpointReceived: Session._checkpoint,
    ev.StreamResumed: Session._stream_resumed,
    ev.ResumeRejected: Session._resume_rejected,
}
