"""The Python SDK: :class:`Agent`, an OutRelay agent inside an asyncio application.

::

    agent = Agent(AgentConfig(relays=("relay.example:7443",), cert=..., key=..., ca=...))
    await agent.start()
    reader, writer = await agent.open_connection("payments")   # consumer
    await agent.serve("orders", handle)                          # provider
    await agent.expose("billing", "127.0.0.1", 8080)             # provider, TCP backend
    ...
    await agent.stop()

One relay session at a time: :meth:`Agent.start` dials the relays in order
and keeps the first that completes HELLO / HELLO_ACK and every REGISTER;
while none does it retries with the reconnect backoff (0, 1, 2, 4 ... 30 s),
one WARN line per attempt (``exit_on_failure``: raise ConnectFailed at the
first failure instead). A supervisor task then waits for the session to end
and reconnects with the same backoff, replaying REGISTER for every service,
until :meth:`Agent.stop`.

Resume (agent.md §4, §7, §8): the agent owns every established stream
across sessions. While bytes flow it sends STREAM_CHECKPOINT for each stream
every 100 ms and frees ring bytes on the peer's checkpoints. When a stream's
relay leg is lost (the session died, or the relay reset the leg with 0x101
because the peer's connection died) the stream is *detached*: the
application sees a pause. As soon as a session is up (at once for a 0x101
reset) a STREAM_RESUME goes out for every detached stream, all concurrently;
the relay pairs the two halves and echoes the partner's positions, and each
side re-sends its gap from the ring. A stream not live again within
``resume_window`` seconds of its loss, or refused by the relay, ends with
:class:`StreamLost` (a ConnectionResetError).

Both agents of a stream must land on the same relay (the relay pairs halves
it sees; there is no relay-to-relay resume). Every reconnect therefore walks
the relay list from its start and takes the first relay that answers, so
agents with the same ``--relay`` list meet on the same relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from outrelay.agent import events as ev
from outrelay.agent.bridge import bridge, close_writer
from outrelay.agent.config import RELAY_ROLES, AgentConfig, format_hostport, parse_hostport
from outrelay.agent.core import AgentProtocol
from outrelay.agent.dial import Candidate, candidates, race
from outrelay.agent.errors import (
    AgentError,
    BackendUnavailable,
    CallerLimit,
    ConnectFailed,
    NoHandler,
    NotConnected,
    ProviderRefusal,
    RegisterRefused,
)
from outrelay.agent.reconnect import Backoff, dial_first
from outrelay.agent.resume import ResumableState, ResumePhase
from outrelay.agent.session import Session
from outrelay.agent.stream import RelayStreamTransport
from outrelay.errors import OutRelayError
from outrelay.identity import IdentityError, parse, peer_uri
from outrelay.observe import REGISTRY, kv
from outrelay.policy.names import check_service_name
from outrelay.resume import CHECKPOINT_PERIOD_MS
from outrelay.transport import MiB, TransportConfig, connect
from outrelay.transport.link import StreamLink
from outrelay.transport.tcp import connect_tcp

log = logging.getLogger("outrelay.agent")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
Runner = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[Any]]

_session_up = REGISTRY.gauge("agent_session_up")
_reconnects = REGISTRY.counter("agent_reconnects")
_resumed = REGISTRY.counter("streams_resumed")
_resume_failed = REGISTRY.counter("streams_resume_failed")
_checkpoints = REGISTRY.counter("agent_checkpoints_sent")
_pause = REGISTRY.histogram("resume_pause_seconds")
_ring_bytes = REGISTRY.gauge("ring_bytes")


def certificate_uri(cert_path: str) -> str:
    """The first URI SAN of the PEM certificate at ``cert_path``.

    Raises:
        OSError: the file cannot be read.
        IdentityError: no URI SAN, or not a certificate.
    """
    with open(cert_path, "rb") as f:
        return peer_uri(f.read())


@dataclass(frozen=True)
class _Service:
    """An exposed service: how to answer an incoming stream for it."""

    name: str
    #: Register.local_addr (informational for the relay).
    local_addr: str
    #: The SDK handler (``serve``), or None for a TCP backend (``expose``).
    handler: Handler | None = None
    host: str = ""
    port: int = 0

    async def prepare(self, dial_timeout: float) -> Runner:
        """Get ready to serve one stream; raises ProviderRefusal to reject it."""
        handler = self.handler
        if handler is not None:

            async def run_handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                result = handler(r, w)
                if result is not None:
                    await result

            return run_handler
        target = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(dial_timeout):
                backend = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise BackendUnavailable(f"dial tcp {target}: i/o timeout") from None
        except OSError as exc:
            why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise BackendUnavailable(f"dial tcp {target}: connect: {why}") from None

        async def run_bridge(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await bridge((r, w), backend)

        return run_bridge


class Agent:
    """An OutRelay agent for asyncio applications (no sidecar needed).

    Not thread-safe: use it from the event loop that called :meth:`start`.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._uri: str | None = config.uri
        self._services: dict[str, _Service] = {}
        #: caller URI -> incoming streams of it being served (fair share)
        self._caller_streams: dict[str, int] = {}
        self._session: Session | None = None
        self._up = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        #: set by stop(): ends a start() or reconnect pause at once
        self._stop_requested = asyncio.Event()
        self._transport_config: TransportConfig | None = None
        self._candidates: list[Candidate] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Resume bookkeeping: established resumable streams by ORP stream id,
        # the lost ones with their give-up timers, the checkpoint timer.
        self._resumable: dict[int, RelayStreamTransport] = {}
        self._lost: dict[RelayStreamTransport, asyncio.TimerHandle] = {}
        self._ring_reported: dict[RelayStreamTransport, int] = {}
        self._checkpoint_timer: asyncio.Handle | None = None
        #: Why there is no session (the last failed attempt or the loss), or None.
        self.last_error: str | None = None

    # -- properties -------------------------------------------------------

    @property
    def uri(self) -> str:
        """The agent's identity URI (``--uri``, else the certificate's first URI SAN).

        Raises:
            OSError, IdentityError: the certificate cannot be read or has no URI SAN.
        """
        if self._uri is None:
            self._uri = certificate_uri(str(self.config.cert))
        return self._uri

    @property
    def connected(self) -> bool:
        """True while a relay session is up."""
        return self._session is not None and not self._session.closed

    @property
    def relay(self) -> str | None:
        """``host:port`` of the relay of the current session (None when disconnected)."""
        return self._session.relay if self.connected and self._session else None

    @property
    def transport(self) -> str | None:
        """``"quic"`` or ``"tcp"``: what carries the current session (None when disconnected)."""
        return self._session.transport if self.connected and self._session else None

    @property
    def services(self) -> list[str]:
        """Names of the exposed services, in registration order."""
        return list(self._services)

    @property
    def resuming(self) -> int:
        """Streams whose relay leg was lost and that wait to be resumed."""
        return len(self._lost)

    # -- life cycle -------------------------------------------------------

    async def start(self) -> None:
        """Connect to the first relay that answers and REGISTER every service.

        Waits, retrying with the reconnect backoff, until one does (cancel
        the call or :meth:`stop` to give up), unless ``config.exit_on_failure``.

        Raises:
            NotConnected: :meth:`stop` was called while waiting.
            ConnectFailed: ``exit_on_failure`` and the first attempt found no
                relay that completed the handshake and registrations.
            RegisterRefused: a relay refused a REGISTER (bind denied, bad name):
                not retried at start, whatever ``exit_on_failure``.
            IdentityError: the agent URI is not a valid OutRelay identity.
            OSError, ValueError: the TLS material cannot be read.
        """
        if self._started:
            raise RuntimeError("agent: already started")
        try:
            parse(self.uri)
        except IdentityError as exc:
            raise IdentityError(f"agent: bad --uri {self.uri!r}: {exc}") from None
        cfg = self.config
        self._transport_config = TransportConfig(
            cert=cfg.cert,
            key=cfg.key,
            ca=cfg.ca,
            server_name=cfg.server_name,
            # The relay is who its certificate says, by role (and pin), before HELLO.
            peer_roles=RELAY_ROLES,
            peer_uri=cfg.relay_uri,
            stream_window=cfg.window,
            connection_window=max(16 * MiB, 4 * cfg.window),
            idle_timeout=cfg.idle_timeout,
            keepalive=cfg.keepalive,
        )
        self._transport_config.quic_configuration(is_client=True)  # fail early on bad files
        self._candidates = candidates(cfg.relays, cfg.relays_tcp, cfg.transport)
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._stopping = False
        self._stop_requested.clear()
        try:
            session = await self._connect(
                Backoff(cap=cfg.max_backoff),
                "agent: waiting for a relay",
                cfg.exit_on_failure,
                starting=True,
            )
        except BaseException:
            self._started = False
            raise
        self._set_session(session)
        self._supervisor = asyncio.create_task(self._supervise(), name="outrelay-agent-supervisor")

    async def stop(self) -> None:
        """Close the session, stop reconnecting and cancel running stream handlers.

        A :meth:`start` still waiting for a relay raises NotConnected.
        """
        self._stopping = True
        self._stop_requested.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        session, self._session = self._session, None
        self._up.clear()
        _session_up.set(0)
        if session is not None:
            await session.close()
        for transport in list(self._lost):
            transport.give_up("agent stopping")
        if self._checkpoint_timer is not None:
            self._checkpoint_timer.cancel()
            self._checkpoint_timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._started = False

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a relay session is up.

        Raises:
            NotConnected: not started, stopped, or ``timeout`` elapsed.
        """
        if not self._started or self._stopping:
            raise NotConnected("agent: not started")
        try:
            async with asyncio.timeout(timeout):
                while not self.connected:
                    await self._up.wait()
                    if self._stopping:
                        raise NotConnected("agent: stopped")
        except TimeoutError:
            raise NotConnected(f"agent: no relay session within {timeout:g} s") from None

    # -- consumer ---------------------------------------------------------

    async def open_connection(
        self,
        service: str,
        *,
        method: str = "",
        timeout: float | None = None,
        early_data: bool = False,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a stream to ``service`` through the relay.

        Waits (up to ``timeout``, default ``config.ready_timeout``) for a
        session if the agent is reconnecting, then for the relay's answer:
        STREAM_READY, or the first application bytes; without either it
        returns after ``config.ready_timeout`` anyway (inter-relay paths send
        no STREAM_READY). ``writer.get_extra_info("stream_id")`` gives the
        ORP stream id.

        ``early_data=True`` skips the wait for the answer: it returns as soon
        as OPEN_STREAM is queued, and what the application writes next goes
        out at once (a write in the same event-loop iteration shares the
        frame's packet), reaching the provider before it has accepted. This
        saves a relay round trip per connection. A reject then surfaces on
        the stream: the next ``read`` or ``drain`` raises
        :class:`StreamRejected` (a ``ConnectionError``), and bytes written
        before it are lost with the stream (the provider never served them).
        Use it when the first bytes are safe to send to a stream that may be
        refused (a request the caller would retry or report anyway).

        Raises:
            StreamRejected: the relay rejected the stream (``.code``, ``.reason``:
                403 policy, 404 unknown service, 503 provider refused, ...).
                With ``early_data``, raised by the stream instead.
            StreamFailed: the relay closed the stream without an answer (with
                ``early_data``: raised by the stream).
            NotConnected: no session (not started, or none within ``timeout``).
        """
        wait = self.config.ready_timeout if timeout is None else timeout
        await self.wait_connected(wait)
        session = self._session
        if session is None:
            raise NotConnected("agent: relay session lost")
        return await session.open(service, method=method, early_data=early_data)

    # -- provider ---------------------------------------------------------

    async def serve(self, service: str, handler: Handler) -> None:
        """Provide ``service``: each incoming stream runs ``handler(reader, writer)``.

        Like ``asyncio.start_server``'s callback; the handler may be a
        coroutine function. ``writer.get_extra_info("peer_uri")`` is the
        consumer's identity. The writer is closed when the handler returns.
        Registers at once when connected (else at :meth:`start`).

        Raises:
            RegisterFailed: the relay did not acknowledge (or refused) the registration.
            ValueError: the service is already exposed, or the name breaks the
                service-name rule (``outrelay.policy.names.InvalidServiceName``).
        """
        await self._add(_Service(service, "", handler=handler))

    async def expose(self, service: str, host: str, port: int) -> None:
        """Provide ``service`` by dialling the TCP backend ``host:port`` per stream.

        A backend that refuses or does not answer within ``config.dial_timeout``
        makes the stream fail with STREAM_REJECT 502 and the error text.

        Raises:
            RegisterFailed: the relay did not acknowledge (or refused) the registration.
            ValueError: the service is already exposed, or the name breaks the
                service-name rule (``outrelay.policy.names.InvalidServiceName``).
        """
        await self._add(_Service(service, format_hostport(host, port), host=host, port=port))

    async def _add(self, service: _Service) -> None:
        check_service_name(service.name)
        if service.name in self._services:
            raise ValueError(f"agent: service {service.name!r} is already exposed")
        self._services[service.name] = service
        session = self._session
        if session is not None and not session.closed:
            try:
                await session.register(service.name, service.local_addr)
            except BaseException:
                self._services.pop(service.name, None)
                raise

    # -- internals --------------------------------------------------------

    async def _dial(self, transport: str, relay: str) -> StreamLink:
        """One transport's handshake with ``relay``; the link once the relay is verified."""
        cfg = self.config
        assert self._transport_config is not None
        host, port = parse_hostport(relay)
        if transport == "tcp":
            return await connect_tcp(
                self._transport_config, host, port, timeout=cfg.connect_timeout
            )
        return await connect(host, port, self._transport_config, timeout=cfg.connect_timeout)

    async def _establish(self, candidate: Candidate) -> Session:
        """Dial one relay (happy eyeballs between its transports), HELLO, REGISTER everything."""
        cfg = self.config
        _, relay, link = await race(candidate, self._dial)
        proto = AgentProtocol(
            self.uri,
            hello_timeout=cfg.hello_timeout,
            register_timeout=cfg.register_timeout,
            ready_timeout=cfg.ready_timeout,
        )
        session = await Session.start(
            link, relay, proto, self._on_incoming, high_water=cfg.window, owner=self
        )
        try:
            for service in list(self._services.values()):
                await session.register(service.name, service.local_addr)
        except BaseException:
            await session.close("registration failed")
            raise
        return session

    def _set_session(self, session: Session) -> None:
        self._session = session
        self.last_error = None
        self._up.set()
        _session_up.set(1)
        log.info(
            "agent: relay session up",
            extra=kv(
                relay=session.relay,
                transport=session.transport,
                uri=self.uri,
                services=",".join(self._services),
            ),
        )
        lost = [t for t in self._lost if t.state is not None]
        if lost:
            log.info(f"agent: resuming {len(lost)} stream(s)", extra=kv(relay=session.relay))
        for transport in lost:
            self._resume(transport)

    # -- resume (StreamOwner, called by the session) -----------------------

    def stream_started(self, transport: RelayStreamTransport) -> None:
        """A stream is about to carry application bytes: give it positions and a ring.

        A consumer stream starts at its OPEN_STREAM, so early data is in
        SentPos and the ring; it can resume only once established.
        """
        cfg = self.config
        stream_id = transport.get_extra_info("stream_id") or 0
        if cfg.resume_window <= 0 or not stream_id:
            return
        other = self._resumable.get(stream_id)
        if other is not None:
            # Both ends of the stream are in this agent: the relay cannot pair
            # two halves from one agent, so neither end can resume.
            other.stop_resuming()
            del self._resumable[stream_id]
            self._ring_forget(other)
            return
        state = ResumableState(
            stream_id, ring_min=cfg.ring_min, ring_max=cfg.ring_max, window=cfg.resume_window
        )
        if not transport.make_resumable(state):
            return
        self._resumable[stream_id] = transport
        transport.on_flow = self._want_checkpoint
        transport.on_detached = self._stream_detached
        transport.on_resumed = self._stream_resumed
        transport.on_finished = self._stream_finished
        self._ring_update(transport)

    def stream_established(self, transport: RelayStreamTransport) -> None:
        """The stream is open end to end: checkpoint what flowed before (early data)."""
        if transport.state is not None and transport.state.sent + transport.state.recv:
            self._want_checkpoint()

    def checkpoint_received(self, event: ev.CheckpointReceived) -> None:
        """The peer's STREAM_CHECKPOINT: free our ring below its position."""
        transport = self._resumable.get(event.stream_id)
        if transport is not None:
            transport.peer_checkpoint(event.peer_ack_position)
            self._ring_update(transport)

    def _want_checkpoint(self, due: bool = False) -> None:
        """Bytes flowed: checkpoint within 100 ms, or at once when ``due`` (volume)."""
        if self._loop is None:
            return
        if due:
            if self._checkpoint_timer is not None:
                self._checkpoint_timer.cancel()
            self._checkpoint_timer = self._loop.call_soon(self._checkpoint_tick)
        elif self._checkpoint_timer is None:
            self._checkpoint_timer = self._loop.call_later(
                CHECKPOINT_PERIOD_MS / 1000, self._checkpoint_tick
            )

    def _checkpoint_tick(self) -> None:
        """Every 100 ms while bytes flow: STREAM_CHECKPOINT for each stream that moved."""
        self._checkpoint_timer = None
        for stream_id, transport in list(self._resumable.items()):
            state, session = transport.state, transport.session
            if state is None or session is None or not transport.live:
                continue
            if not transport.established:
                continue  # early data: no checkpoint before the relay answered
            positions = state.checkpoint()
            if positions is not None:
                session.send_checkpoint(stream_id, *positions)
                _checkpoints.inc()
            self._ring_update(transport)

    def _stream_detached(self, transport: RelayStreamTransport) -> None:
        state = transport.state
        assert state is not None and self._loop is not None
        if self._stopping:
            transport.give_up("agent stopping")
            return
        if transport not in self._lost:
            deadline = state.deadline or self._loop.time()
            self._lost[transport] = self._loop.call_at(deadline, self._give_up, transport)
            log.info(
                "agent: stream lost its relay leg; resuming",
                extra=kv(stream_id=f"{state.stream_id:#x}", sent=state.sent, recv=state.recv),
            )
        session = self._session
        if session is not None and not session.closed:
            self._resume(transport)

    def _resume(self, transport: RelayStreamTransport) -> None:
        session = self._session
        state = transport.state
        if session is None or session.closed or state is None:
            return
        if state.phase is not ResumePhase.DETACHED:
            return
        try:
            session.resume(transport)
        except (OutRelayError, ConnectionError) as exc:
            # The session is going down (the stream is still DETACHED); the
            # next one resumes the stream.
            log.debug("agent: resume deferred", extra=kv(err=str(exc)))

    def _give_up(self, transport: RelayStreamTransport) -> None:
        # _stream_finished takes it out of _lost and counts the failure.
        window = self.config.resume_window
        transport.give_up(f"not resumed within the resume window ({window:g} s)")

    def _stream_resumed(self, transport: RelayStreamTransport) -> None:
        timer = self._lost.pop(transport, None)
        if timer is not None:
            timer.cancel()
        _resumed.inc()
        state = transport.state
        pause = state.pause if state is not None else None
        if pause is not None:
            _pause.observe(pause)
        log.info(
            "agent: stream resumed",
            extra=kv(
                stream_id=f"{state.stream_id:#x}" if state else "?",
                pause=f"{pause:.3f}" if pause is not None else "?",
            ),
        )

    def _stream_finished(self, transport: RelayStreamTransport) -> None:
        timer = self._lost.pop(transport, None)
        if timer is not None:
            timer.cancel()
            if transport.error is not None:
                _resume_failed.inc()
                log.warning(
                    "agent: stream could not be resumed", extra=kv(err=str(transport.error))
                )
        stream_id = transport.get_extra_info("stream_id") or 0
        if self._resumable.get(stream_id) is transport:
            del self._resumable[stream_id]
        self._ring_forget(transport)

    def _ring_update(self, transport: RelayStreamTransport) -> None:
        state = transport.state
        cap = state.ring_capacity if state is not None else 0
        before = self._ring_reported.get(transport, 0)
        if cap != before:
            self._ring_reported[transport] = cap
            _ring_bytes.set(_ring_bytes.value + cap - before)

    def _ring_forget(self, transport: RelayStreamTransport) -> None:
        before = self._ring_reported.pop(transport, 0)
        if before:
            _ring_bytes.set(_ring_bytes.value - before)

    async def _connect(
        self, backoff: Backoff, waiting: str, give_up: bool, *, starting: bool = False
    ) -> Session:
        """Dial the relays until one session is up, pausing per ``backoff``.

        Each failed round logs ``<waiting>: <why>; retry in <n>s``.

        Raises:
            ConnectFailed: ``give_up`` and the first round failed.
            RegisterRefused: ``starting`` and the relay refused a REGISTER.
            NotConnected: :meth:`stop` was called meanwhile.
        """
        while True:
            delay = backoff.next_delay()
            if delay:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop_requested.wait()
            if self._stopping:
                raise NotConnected("agent: stopped while waiting for a relay")
            try:
                return await dial_first(self._candidates, self._establish)
            except (ConnectFailed, RegisterRefused) as exc:
                # A refused REGISTER (bind denied, bad name) at start is a
                # configuration error: fail with it. After a session loss it is
                # retried like an outage (the operator may restore the rule).
                if give_up or (starting and isinstance(exc, RegisterRefused)):
                    raise
                why = str(exc).removeprefix("agent: ")
                self.last_error = why
                retry = backoff.upcoming
                log.warning(f"{waiting}: {why}; retry in {retry:g}s", extra=kv(retry_in=retry))

    async def _supervise(self) -> None:
        backoff = Backoff(cap=self.config.max_backoff)
        while not self._stopping:
            session = self._session
            assert session is not None
            reason = await session.wait_closed()
            self._session = None
            self.last_error = f"session lost: {reason}"
            self._up.clear()
            _session_up.set(0)
            log.warning(
                "agent: session lost; reconnecting", extra=kv(relay=session.relay, reason=reason)
            )
            if self._stopping:
                break
            try:
                new = await self._connect(backoff, "agent: reconnect failed", False)
            except NotConnected:  # stop() was called
                break
            _reconnects.inc()
            backoff.reset()
            self._set_session(new)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_incoming(
        self,
        session: Session,
        event: ev.IncomingStreamReceived,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._spawn(self._serve_stream(session, event, reader, writer), f"incoming-{event.qid}")

    async def _serve_stream(
        self,
        session: Session,
        event: ev.IncomingStreamReceived,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        fields = kv(service=event.service, source=event.source_uri, stream_id=event.stream_id)
        caller = event.source_uri
        held = self._caller_streams.get(caller, 0)
        if held >= self.config.max_streams_per_caller:
            # one caller cannot take every stream this provider serves
            log.warning("agent: rejecting incoming stream: caller stream limit", extra=fields)
            session.reject(event.qid, CallerLimit.code, CallerLimit().reason)
            return
        self._caller_streams[caller] = held + 1
        try:
            await self._serve_counted(session, event, reader, writer, fields)
        finally:
            left = self._caller_streams[caller] - 1
            if left:
                self._caller_streams[caller] = left
            else:
                del self._caller_streams[caller]

    async def _serve_counted(
        self,
        session: Session,
        event: ev.IncomingStreamReceived,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fields: dict[str, Any],
    ) -> None:
        try:
            service = self._services.get(event.service)
            if service is None:
                raise NoHandler()
            runner = await service.prepare(self.config.dial_timeout)
        except ProviderRefusal as exc:
            log.warning(f"agent: rejecting incoming stream: {exc.code} {exc.reason}", extra=fields)
            session.reject(event.qid, exc.code, exc.reason)
            return
        except Exception as exc:  # a bug in prepare: refuse rather than hang the consumer
            log.exception("agent: incoming stream setup failed", extra=fields)
            session.reject(event.qid, BackendUnavailable.code, str(exc) or type(exc).__name__)
            return
        if session.closed:
            return
        session.accept(event.qid)
        log.debug("agent: incoming stream accepted", extra=fields)
        try:
            await runner(reader, writer)
        except (ConnectionError, OutRelayError) as exc:
            log.debug("agent: stream handler ended with an error", extra=kv(err=str(exc)))
        except Exception:
            log.exception("agent: stream handler failed", extra=fields)
        finally:
            await close_writer(writer)


__all__ = ["Agent", "AgentConfig", "AgentError", "certificate_uri"]
