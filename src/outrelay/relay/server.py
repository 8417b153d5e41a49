"""The relay process: the asyncio shell around :class:`~outrelay.relay.core.RelayCore`.

It listens for QUIC (``outrelay.transport.serve``) and, with ``--listen-tcp``,
for TCP + TLS + yamux (``outrelay.transport.tcp.serve_tcp``); both hand it
verified links with one interface (``outrelay.transport.link.StreamLink``),
so the core and the splices never learn the transport and any mix is
spliced. It numbers connections, and turns transport events into core
inputs; the core's actions are applied at once, in order, from the same
callback, so frames to one stream never interleave. Streams the core has
handed to a splice are fed to their :class:`~outrelay.relay.splice.Splice`
instead. Background tasks: controller
RPCs the core asked for, the UpsertRelay heartbeat, one ``Policy.Watch`` per
tenant, the audit sender, the opens-per-second gauge, the debug HTTP server
and the metrics dumper. One timer runs the core's resume deadlines.

Controller outages. The shell tracks whether the controller answers: any
RPC failing as unreachable (``errors.TRANSIENT``) marks it down; then the
heartbeat polls ``UpsertRelay`` every ``RECONNECT_POLL_S`` instead of every
``--heartbeat``. Meanwhile streams keep flowing, the engine keeps its rules,
Resolve falls back to the core's cached answers, REGISTERs are acknowledged
and kept, audit batches wait in their (bounded) queue, and each watch waits
for the channel (``wait_for_ready``; the channel reconnects within 0.5 s).
The first success marks it up again: the core re-sends its desired
registrations (``RelayCore.controller_back``), the audit queue is flushed,
and each watch's new snapshot replaces that tenant's rules.

Start in any order. ``start`` binds QUIC and the debug server first, then
waits for the controller: UpsertRelay is retried with backoff
(``CONTROLLER_RETRY_S`` doubling to ``CONTROLLER_RETRY_MAX_S``, or at once
when the gRPC channel becomes ready), one WARN line per attempt; a refusal
that is not an outage (PERMISSION_DENIED, ...) is a StartError. Then it
waits for every tenant's first policy snapshot. Until both are done the
relay serves nothing: each verified connection is closed at once with the
reason (``NOT_READY``) and ``/readyz`` answers 503; agents retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from outrelay import loop as loops
from outrelay.childproc import write_ready_file
from outrelay.identity import Role
from outrelay.observe import REGISTRY, DebugServer, Registry, kv, run_dumper
from outrelay.policy import PolicyEngine
from outrelay.proto import policy_pb2, registry_pb2
from outrelay.relay.actions import (
    Action,
    CallController,
    CloseConnection,
    Grant,
    OpenStream,
    ResetStream,
    Send,
    StartSplice,
    StopReading,
)
from outrelay.relay.audit import AuditQueue, tenant_of
from outrelay.relay.config import ConfigError, RelayConfig, certificate_relay_id, split_hostport
from outrelay.relay.controller_client import ControllerClient, error_of
from outrelay.relay.core import RelayCore
from outrelay.relay.errors import TRANSIENT, ControllerError
from outrelay.relay.policy_watch import SNAPSHOT_END, PolicyWatcher, TenantWatch
from outrelay.relay.splice import SPLICE_ABORTED, Splice, SpliceMeters
from outrelay.transport import (
    ConnectionClosed,
    Event,
    HandshakeVerified,
    SendCapacityAvailable,
    Server,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
    TransportConfig,
    TransportError,
    serve,
)
from outrelay.transport.admission import AdmissionMeters
from outrelay.transport.link import StreamLink
from outrelay.transport.tcp import TcpServer, serve_tcp

log = logging.getLogger("outrelay.relay")

#: Roles the QUIC listener accepts, checked on the verified client leaf before
#: any stream is served (an admin's, a relay's or an unparseable URI is refused
#: in the handshake). Relay-to-relay links will add ``Role.RELAY`` here.
LISTENER_ROLES = frozenset({Role.AGENT})

#: UpsertRelay at startup must answer within this (relay.md §1.2).
UPSERT_TIMEOUT_S = 5.0
#: Limit of every other unary controller RPC (the reference has none; a hung
#: controller must not hang an agent's REGISTER or OPEN_STREAM forever).
CALL_TIMEOUT_S = 10.0
#: Pause before re-subscribing a broken Policy.Watch: first, then the cap
#: (the reference waits 2 s, relay.md §16.3; a change made right after the
#: controller restarts must reach us within a second).
WATCH_BACKOFF_S = 0.1
WATCH_BACKOFF_MAX_S = 0.5
#: UpsertRelay period while the controller is unreachable.
RECONNECT_POLL_S = 0.5
#: Pause between start-up UpsertRelay attempts while the controller is not
#: up yet: first, then the cap (cut short when the channel becomes ready).
CONTROLLER_RETRY_S = 0.5
CONTROLLER_RETRY_MAX_S = 5.0
#: CONNECTION_CLOSE reason for an agent that connects before the relay serves.
NOT_READY = "relay not ready: waiting for the controller and the policy snapshot"


class StartError(Exception):
    """The relay could not start (bind, controller, credentials)."""


class Relay:
    """One running relay; ``start`` then ``stop``."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        metrics: Registry = REGISTRY,
        client: ControllerClient | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.ready = False
        self.relay_id = certificate_relay_id(config)
        self.addresses: dict[str, str] = {}
        tenants = config.tenants
        self.engine = PolicyEngine() if tenants else None
        self.audit = AuditQueue(config.audit_queue, registry=metrics) if tenants else None
        self.core = RelayCore(
            self.relay_id,
            config.region,
            policy=self.engine,
            audit=self.audit,
            metrics=metrics,
            resume_window=config.resume_window,
            resolve_ttl=config.resolve_cache_ttl,
            max_streams_per_caller=config.max_streams_per_caller,
        )
        self.watcher = (
            PolicyWatcher(tenants, self.engine, self.core.policy_changed)
            if self.engine is not None
            else None
        )
        self._client = client
        self._server: Server | None = None
        self._tcp_server: TcpServer | None = None
        self._debug: DebugServer | None = None
        self._links: dict[int, StreamLink] = {}
        self._next_conn = 1
        self._spliced: dict[tuple[int, int], Splice] = {}
        self._conn_splices: dict[int, set[Splice]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._audit_wake = asyncio.Event()
        self._synced = asyncio.Event()
        self.m_opens_rate = metrics.gauge("stream_opens_per_second")
        self._splice_meters = SpliceMeters(metrics)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        #: the controller answers (False until the first UpsertRelay answered,
        #: and from the first unreachable failure until the next success)
        self.controller_up = False
        self._controller_wake = asyncio.Event()
        self.m_controller_up = metrics.gauge("controller_up")
        self.m_controller_up.set(0)  # 1 from the first UpsertRelay answered
        #: 1: the policies of --tenant are enforced; 0: --no-policy
        self.m_policy_enforced = metrics.gauge("relay_policy_enforced")
        self.m_policy_enforced.set(1 if self.engine is not None else 0)
        self.m_not_ready = metrics.counter("connections_refused_not_ready")
        self.m_outages = metrics.counter("controller_outages")
        self.m_watch_subs = metrics.counter("policy_watch_subscriptions")

    @property
    def client(self) -> ControllerClient:
        assert self._client is not None, "relay not started"
        return self._client

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Bind, wait for the controller and the policy snapshots, then serve.

        Waits as long as the controller is unreachable (cancel to give up).

        Raises:
            ConfigError: invalid settings or unreadable credentials.
            StartError: the listener cannot be bound, or the controller
                refused UpsertRelay (not an outage: a wrong identity, ...).
        """
        cfg = self.config
        cfg.check()
        try:
            if self._client is None:
                self._client = ControllerClient(
                    cfg.controller,
                    cert=cfg.cert,
                    key=cfg.key,
                    ca=cfg.controller_ca or cfg.ca,
                    server_name=cfg.controller_server_name,
                    insecure=cfg.insecure_controller,
                )
            tconf = TransportConfig(
                cert=cfg.cert,
                key=cfg.key,
                ca=cfg.ca,
                peer_roles=LISTENER_ROLES,
                stream_window=cfg.window,
                connection_window=cfg.connection_window,
                idle_timeout=cfg.idle_timeout,
                keepalive=cfg.keepalive,
                retry=cfg.retry.lower(),
                retry_threshold=cfg.retry_threshold,
                max_half_open=cfg.max_half_open,
            )
            tconf.quic_configuration(is_client=False)  # loads cert and key: fail early
        except (OSError, ValueError, TransportError) as exc:
            raise ConfigError(f"credentials: {exc}") from None
        if self.engine is None:
            log.warning(
                "WARNING: --no-policy: this relay enforces no policy and records no audit; "
                "every agent the CA signed may open every service"
            )
        host, port = split_hostport(cfg.listen, "listen")
        try:
            self._server = await serve(
                host, port, tconf, self._on_link, meters=AdmissionMeters.from_registry(self.metrics)
            )
        except (OSError, TransportError, ValueError) as exc:
            raise StartError(f"listen {cfg.listen}: {exc}") from None
        bound_host, bound_port = self._server.address
        quic = f"{bound_host}:{bound_port}"
        self.addresses["quic"] = quic
        self.advertise = cfg.advertise or quic
        if cfg.listen_tcp:
            thost, tport = split_hostport(cfg.listen_tcp, "listen-tcp")
            try:
                self._tcp_server = await serve_tcp(tconf, thost, tport, self._on_link)
            except (OSError, TransportError, ValueError) as exc:
                await self._close_server()
                raise StartError(f"listen-tcp {cfg.listen_tcp}: {exc}") from None
            tcp_host, tcp_port = self._tcp_server.address
            self.addresses["tcp"] = f"{tcp_host}:{tcp_port}"
        if cfg.debug_listen:  # up while we wait: /readyz says 503, /metrics shows why
            self._debug = DebugServer(self.metrics, ready=lambda: self.ready)
            try:
                dhost, dport = await self._debug.start(*split_hostport(cfg.debug_listen, "debug"))
                self.addresses["debug"] = f"{dhost}:{dport}"
            except OSError as exc:
                log.warning("debug server not started", extra=kv(err=str(exc)))
                self._debug = None
        await self._wait_for_controller()
        log.info(
            "relay listening",
            extra=kv(
                quic=quic,
                tcp=self.addresses.get("tcp", ""),
                relay_id=self.relay_id,
                tenants=",".join(cfg.tenants),
            ),
        )
        self._spawn(self._heartbeat())
        self._spawn(self._opens_rate())
        if self.watcher is not None:
            for watch in self.watcher.tenants.values():
                self._spawn(self._watch(watch))
        else:
            self._synced.set()
        if self.audit is not None:
            self.audit.notify = self._audit_wake.set
            self._spawn(self._audit_sender())
        if cfg.metrics_dump:
            self._spawn(run_dumper(self.metrics, cfg.metrics_dump, cfg.metrics_interval))
        if not self._synced.is_set():
            log.info("waiting for the policy snapshot", extra=kv(tenants=",".join(cfg.tenants)))
        await self._synced.wait()  # no stream is served on a partial rule set
        self.ready = True
        log.info("relay serving", extra=kv(quic=quic, relay_id=self.relay_id))
        if cfg.ready_file:
            write_ready_file(cfg.ready_file, {**self.addresses, "relay_id": self.relay_id})

    async def _wait_for_controller(self) -> None:
        """UpsertRelay until the controller answers; one WARN line per failed attempt.

        Raises:
            StartError: the controller answered with a refusal (not an outage).
        """
        target = self.config.controller
        delay = CONTROLLER_RETRY_S
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._upsert(UPSERT_TIMEOUT_S)
            except ControllerError as exc:
                if exc.status not in TRANSIENT:
                    raise StartError(f"UpsertRelay to {target}: {exc.reason}") from None
                log.warning(
                    f"waiting for controller {target}: {exc.reason}; retry in {delay:g}s",
                    extra=kv(attempt=attempt, status=exc.status),
                )
                await self.client.wait_ready(delay)
                delay = min(delay * 2, CONTROLLER_RETRY_MAX_S)
                continue
            break
        if attempt > 1:
            log.info("controller reachable", extra=kv(controller=target, attempts=attempt))
        self.controller_up = True
        self.m_controller_up.set(1)

    async def stop(self) -> None:
        """Deregister agents, close every connection, stop background work. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self.ready = False
        log.info("relay stopping")
        if self._client is not None and self._server is not None:
            calls = [
                self.client.call(
                    "DeregisterAgent",
                    registry_pb2.DeregisterAgentRequest(
                        tenant=tenant_of(uri), agent_uri=uri, relay_id=self.relay_id
                    ),
                    timeout=2.0,
                )
                for uri in self.core.local.uris()
            ]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    await asyncio.gather(*calls, return_exceptions=True)
        for splice in list(self._spliced.values()):
            splice.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._close_server()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._debug is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._debug.close(), 2.0)
            self._debug = None
        if self._client is not None:
            await self._client.close()
        log.info("relay stopped")

    async def _close_server(self) -> None:
        tcp, self._tcp_server = self._tcp_server, None
        if tcp is not None:
            tcp.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tcp.wait_closed(), 2.0)
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._server = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- transport events -------------------------------------------------------

    def _on_link(self, link: StreamLink) -> None:
        if not self.ready:
            # No stream before the controller and the policy snapshot: the
            # agent learns why and retries with its backoff.
            self.m_not_ready.inc()
            link.close(0, NOT_READY)
            return
        conn = self._next_conn
        self._next_conn += 1
        self._links[conn] = link
        link.on_event = functools.partial(self._on_event, conn)

    def _on_event(self, conn: int, link: StreamLink, event: Event) -> None:
        kind = type(event)
        if kind is StreamDataReceived:
            assert isinstance(event, StreamDataReceived)
            splice = self._spliced.get((conn, event.stream_id))
            if splice is not None:
                splice.data(link, event.stream_id, event.data, event.end_stream)
            else:
                self._apply(
                    self.core.stream_data(conn, event.stream_id, event.data, event.end_stream)
                )
        elif kind is SendCapacityAvailable:
            assert isinstance(event, SendCapacityAvailable)
            splice = self._spliced.get((conn, event.stream_id))
            if splice is not None:
                splice.drained(link, event.stream_id, event.drained)
            else:
                actions = self.core.stream_drained(conn, event.stream_id, event.drained)
                if actions:  # early data acknowledged: grants only, no timer change
                    self._apply(actions)
        elif kind is StreamReset or kind is StopSendingReceived:
            assert isinstance(event, StreamReset | StopSendingReceived)
            splice = self._spliced.get((conn, event.stream_id))
            if splice is None:
                self._apply(self.core.stream_aborted(conn, event.stream_id))
            elif kind is StreamReset:
                splice.reset(link, event.stream_id, event.error_code)
            else:
                splice.stop_sending(link, event.stream_id, event.error_code)
        elif kind is HandshakeVerified:
            assert isinstance(event, HandshakeVerified)
            self._apply(self.core.connection_verified(conn, event.peer_uri, link.addr))
        elif kind is ConnectionClosed:
            for splice in list(self._conn_splices.get(conn, ())):
                splice.connection_closed(link)
            self._links.pop(conn, None)
            self._apply(self.core.connection_closed(conn))

    # -- core actions -----------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._apply_one(action)
            except TransportError as exc:
                log.debug("action failed", extra=kv(action=type(action).__name__, err=str(exc)))
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Keep one timer at the core's next deadline (resume windows)."""
        deadline = self.core.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and not self._stopping:
            delay = max(0.0, deadline - self.core.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._apply(self.core.timer())

    def _apply_one(self, action: Action) -> None:
        kind = type(action)
        if kind is Send:  # the most common action first
            assert isinstance(action, Send)
            link = self._links.get(action.conn)
            if link is not None:
                link.send(action.stream, action.data, action.fin)
            return
        if kind is CallController:
            assert isinstance(action, CallController)
            if not self._stopping:
                self._spawn(self._call(action))
            return
        if kind is OpenStream:
            assert isinstance(action, OpenStream)
            self._open_stream(action)
            return
        if kind is StartSplice:
            assert isinstance(action, StartSplice)
            self._start_splice(action)
            return
        link = self._links.get(action.conn)  # type: ignore[attr-defined]
        if link is None:
            return
        if kind is Grant:
            assert isinstance(action, Grant)
            link.grant(action.stream, action.n)
        elif kind is StopReading:
            assert isinstance(action, StopReading)
            link.stop_stream(action.stream, action.code)
        elif kind is ResetStream:
            assert isinstance(action, ResetStream)
            link.reset_stream(action.stream, SPLICE_ABORTED)
            link.stop_stream(action.stream, SPLICE_ABORTED)
        elif kind is CloseConnection:
            assert isinstance(action, CloseConnection)
            link.close(action.code, action.reason)

    def _open_stream(self, action: OpenStream) -> None:
        link = self._links.get(action.conn)
        if link is not None and not link.closed and link.streams_available() <= 0:
            # QUIC would queue the stream until the provider frees one: refuse now
            log.debug("provider stream credit exhausted", extra=kv(conn=action.conn))
            self._apply(self.core.stream_open_failed(action.token, busy=True))
            return
        try:
            if link is None:
                raise TransportError("provider connection is gone")
            stream = link.open_stream()
            link.send(stream, action.data, action.fin)
        except TransportError as exc:
            log.warning("provider stream open failed", extra=kv(err=str(exc)))
            self._apply(self.core.stream_open_failed(action.token))
            return
        self._apply(self.core.stream_opened(action.token, stream))

    def _start_splice(self, action: StartSplice) -> None:
        a, b = action.a, action.b
        la, lb = self._links.get(a.conn), self._links.get(b.conn)
        if la is None or lb is None:
            for link, leg in ((la, a), (lb, b)):
                if link is not None:
                    with contextlib.suppress(TransportError):
                        link.reset_stream(leg.stream, SPLICE_ABORTED)
                        link.stop_stream(leg.stream, SPLICE_ABORTED)
            self._apply(self.core.splice_ended(action.flow))
            return

        def ended(splice: Splice) -> None:
            for key in ((a.conn, a.stream), (b.conn, b.stream)):
                if self._spliced.get(key) is splice:
                    del self._spliced[key]
            for c in (a.conn, b.conn):
                splices = self._conn_splices.get(c)
                if splices is not None:
                    splices.discard(splice)
                    if not splices:
                        del self._conn_splices[c]
            self._apply(self.core.splice_ended(action.flow))

        splice = Splice(la, a.stream, lb, b.stream, on_end=ended, meters=self._splice_meters)
        self._spliced[(a.conn, a.stream)] = splice
        self._spliced[(b.conn, b.stream)] = splice
        self._conn_splices.setdefault(a.conn, set()).add(splice)
        self._conn_splices.setdefault(b.conn, set()).add(splice)
        for link, leg in ((la, a), (lb, b)):
            if leg.sent or leg.fin_sent or leg.unacked:
                splice.early(link, leg.stream, leg.sent, leg.fin_sent, leg.unacked)
        if a.pending or a.fin:
            splice.data(la, a.stream, a.pending, a.fin)
        if (b.pending or b.fin) and not splice.ended:
            splice.data(lb, b.stream, b.pending, b.fin)

    # -- background work --------------------------------------------------------

    async def _call(self, action: CallController) -> None:
        try:
            response = await self.client.call(action.method, action.request, CALL_TIMEOUT_S)
        except ControllerError as err:
            self._controller_failed(err)
            if action.token is None:
                log.warning(f"{action.method} failed", extra=kv(err=err.reason))
            else:
                self._apply(self.core.controller_failed(action.token, err))
            return
        self._controller_ok()
        if action.token is not None:
            self._apply(self.core.controller_replied(action.token, response))

    def _controller_failed(self, err: ControllerError) -> None:
        """An RPC failed; if the controller is unreachable, note the outage."""
        if err.status not in TRANSIENT or not self.controller_up or self._stopping:
            return
        self.controller_up = False
        self.m_controller_up.set(0)
        self.m_outages.inc()
        log.warning(
            "controller unreachable; serving from cached state",
            extra=kv(status=err.status, err=err.reason),
        )
        self._controller_wake.set()  # the heartbeat switches to polling

    def _controller_ok(self) -> None:
        """An RPC succeeded; after an outage, re-send what the controller missed."""
        if self.controller_up or self._stopping:
            return
        self.controller_up = True
        self.m_controller_up.set(1)
        log.info("controller reachable again")
        self._apply(self.core.controller_back())
        self._audit_wake.set()

    async def _upsert(self, timeout: float) -> None:
        request = registry_pb2.UpsertRelayRequest(
            id=self.relay_id, region=self.config.region, endpoint=self.advertise
        )
        await self.client.call("UpsertRelay", request, timeout)

    async def _heartbeat(self) -> None:
        """UpsertRelay every --heartbeat; every RECONNECT_POLL_S while the controller is down."""
        while True:
            period = self.config.heartbeat if self.controller_up else RECONNECT_POLL_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._controller_wake.wait()
            self._controller_wake.clear()
            up = self.controller_up
            try:
                await self._upsert(UPSERT_TIMEOUT_S if up else RECONNECT_POLL_S * 4)
            except ControllerError as exc:
                if up:
                    log.warning("relay heartbeat failed", extra=kv(err=exc.reason))
                self._controller_failed(exc)
                continue
            self._controller_ok()

    async def _opens_rate(self) -> None:
        opens = self.core.m_opens
        last = opens.value
        while True:
            await asyncio.sleep(1.0)
            now = opens.value
            self.m_opens_rate.set(now - last)
            last = now

    async def _watch(self, watch: TenantWatch) -> None:
        """One tenant's Policy.Watch, re-subscribed whenever it breaks.

        ``wait_for_ready``: while the controller is down the call waits for
        the channel instead of failing, so it starts as soon as the channel
        reconnects. Each subscription begins with a full snapshot, which
        replaces the tenant's rules (the re-list); the engine keeps its rules
        in between.
        """
        request = policy_pb2.WatchPoliciesRequest(tenant=watch.tenant)
        backoff = WATCH_BACKOFF_S
        while True:
            try:
                call = self.client.policy.Watch(request, wait_for_ready=True)
                watch.subscribed()
                self.m_watch_subs.inc()
                async for event in call:
                    if event.kind == SNAPSHOT_END:
                        backoff = WATCH_BACKOFF_S
                        self._controller_ok()
                        log.info("policy snapshot applied", extra=kv(tenant=watch.tenant))
                    if watch.apply(event) and self.watcher is not None and self.watcher.synced:
                        self._synced.set()
                log.warning("policy watch ended", extra=kv(tenant=watch.tenant))
            except grpc.aio.AioRpcError as exc:
                err = error_of(exc)
                log.warning(
                    "policy watch failed",
                    extra=kv(tenant=watch.tenant, code=err.status, err=err.reason),
                )
                self._controller_failed(err)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, WATCH_BACKOFF_MAX_S)

    async def _audit_sender(self) -> None:
        """Send queued audit events; keep them queued while the controller is down."""
        assert self.audit is not None
        while True:
            await self._audit_wake.wait()
            self._audit_wake.clear()
            while self.controller_up and (batch := self.audit.take()):
                try:
                    await self.client.record(batch)
                    self.audit.sent.add(len(batch))
                except ControllerError as exc:
                    if exc.status in TRANSIENT:
                        self.audit.requeue(batch)  # sent again when the controller is back
                        self._controller_failed(exc)
                    else:
                        self.audit.dropped.add(len(batch))
                    log.warning("audit send failed", extra=kv(n=len(batch), err=exc.reason))
                else:
                    self._controller_ok()


async def serve_until(config: RelayConfig, stop: asyncio.Event) -> None:
    """Run a relay until ``stop`` is set (raises like :meth:`Relay.start`).

    ``stop`` also ends a start that is still waiting for the controller.
    """
    relay = Relay(config)
    try:
        starting = asyncio.ensure_future(relay.start())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (starting, stopped):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if not starting.cancelled():
            starting.result()  # a start error is raised here
            await stop.wait()
    finally:
        await relay.stop()


def run(
    config: RelayConfig,
    *,
    on_signal: Callable[[int], None] | None = None,
    loop: str = loops.DEFAULT,
) -> None:
    """Serve until SIGINT or SIGTERM (the ``outrelay relay`` command).

    Raises ConfigError or StartError when the relay cannot start.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):

            def handle(signum: int = signum) -> None:
                log.info("relay: signal received", extra=kv(signal=signal.Signals(signum).name))
                if on_signal is not None:
                    on_signal(signum)
                stop.set()

            loop.add_signal_handler(signum, handle)
        await serve_until(config, stop)

    loops.run(main(), loop)
