"""The relay's protocol logic, sans-IO: inputs in, :mod:`actions` out.

How this works
--------------
The asyncio shell (``server.py``) owns sockets, QUIC connections and the
controller client. It numbers connections and calls one method of
:class:`RelayCore` per thing that happened; each returns a list of actions to
apply in order. The core never blocks and never reads a clock other than the
ones it was given, so the whole relay logic runs in memory in tests.

Inputs:

* ``connection_verified`` -- a QUIC connection's client certificate passed
  verification (chain, validity, clientAuth; done by ``outrelay.transport``).
  The core checks the identity: only ``agent`` URIs may use the agent path.
* ``stream_data`` / ``stream_aborted`` -- bytes, FIN, or a reset on a stream
  the core still reads (control streams and streams not yet spliced).
* ``controller_replied`` / ``controller_failed`` -- the result of a
  :class:`~actions.CallController`.
* ``stream_opened`` / ``stream_open_failed`` -- result of an
  :class:`~actions.OpenStream`.
* ``stream_drained`` -- the peer acknowledged bytes sent on a stream the core
  still owns (early data toward a provider that has not answered yet).
* ``splice_ended`` -- both directions of a :class:`~actions.StartSplice` ended.
* ``connection_closed`` -- the connection is gone.

The agent path (relay.md §3-§7, §11, §12):

1. The first client-initiated bidirectional stream (QUIC id 0) is the control
   stream. Its first frame must be HELLO whose ``agent_uri`` equals the
   certificate URI byte for byte, else the connection is closed without a
   reply. Data streams that arrive before HELLO_ACK wait (unread, so the
   transport's window bounds them).
2. Control frames are handled strictly in order; while a REGISTER waits for
   the controller, later control bytes are not even read.
3. Every other client stream is a data stream whose first frame decides what
   it is. OPEN_STREAM runs: caller-side policy -> provider choice (an agent
   connected here that registered the service, else Resolve at the
   controller) -> callee-side policy -> pair record (409 on collision) ->
   INCOMING_STREAM to the provider -> its STREAM_ACCEPT / STREAM_REJECT ->
   STREAM_READY on both control streams -> splice.

   Early data: bytes the consumer sends after OPEN_STREAM are kept,
   ungranted, until INCOMING_STREAM is written: those already in go out
   behind it in the same ``OpenStream`` (one send), later ones are forwarded
   at once (``Send``), before the provider's answer. They stay ungranted until
   the provider acknowledges them (``stream_drained``; the splice takes over
   the count), so the stream window bounds them as in a splice. Bytes the
   provider sends after STREAM_ACCEPT are kept and handed to the splice.
   The OPEN_STREAM frame's own bytes are granted with the answer (STREAM_READY
   or the reject), so their credit rides in that packet instead of one more.

4. A data stream whose first frame is STREAM_RESUME or MIGRATE_TO_RELAY is a
   resume *half* for :class:`~resume.ResumeMatcher` (relay.md §8-§9). When
   two halves match, both echoes are written, the pair is recorded (so
   checkpoints for the resumed stream are routable), then one StartSplice.
   A half that waits out the window (``timer``) or is refused ends with a
   STREAM_REJECT (504 / 409 / 403).

Controller outages: a Resolve that fails as unreachable falls back to the
last good answer (``ResolveCache``); a REGISTER is acknowledged and kept;
``controller_back`` re-sends registrations and failed deregistrations.

Refusals are :class:`~errors.RelayError` subclasses carrying their reject
code; ``_reject`` is the one place they become STREAM_REJECT frames.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from outrelay.identity import Identity, IdentityError, Role, parse
from outrelay.observe import REGISTRY, Counter, Registry, kv
from outrelay.orp import (
    HEADER_SIZE,
    MAX_CONTROL_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    OrpError,
    decode_header,
    decode_message,
    encode_frame,
    encode_message,
)
from outrelay.policy import P2PMode, PolicyEngine, RelayMode, combine_p2p
from outrelay.policy.engine import Decision
from outrelay.proto import orp_pb2, registry_pb2
from outrelay.relay.actions import (
    Action,
    CallController,
    CloseConnection,
    Grant,
    Leg,
    OpenStream,
    ResetStream,
    Send,
    StartSplice,
    StopReading,
    acked_credit,
)
from outrelay.relay.audit import AuditQueue, audit_event, tenant_of
from outrelay.relay.cache import RESOLVE_TTL_S, DecisionCache, ResolveCache
from outrelay.relay.errors import (
    TRANSIENT,
    BadGateway,
    Collision,
    ControllerError,
    Denied,
    NotFound,
    RelayError,
    ResumeExpired,
    Unavailable,
    register_refusal,
    reject_frame,
)
from outrelay.relay.pairs import PairTable
from outrelay.relay.registry import Chosen, LocalAgents, ProviderChooser
from outrelay.relay.resume import (
    RESUME_WINDOW_S,
    Half,
    HalfExpired,
    HalfRefused,
    HalvesMatched,
    MatchEvent,
    ResumeMatcher,
)

log = logging.getLogger("outrelay.relay")

#: QUIC id of the control stream (the first client-initiated bidirectional one).
CONTROL_STREAM = 0
#: Largest opening frame of a data stream we accept (well under the window,
#: so a peer cannot stall a stream by announcing a frame it may never send).
MAX_OPENING_FRAME = 64 * 1024

_FORWARDED: dict[int, type[Message]] = {
    FrameType.CANDIDATE_OFFER: orp_pb2.CandidateOffer,
    FrameType.CANDIDATE_ANSWER: orp_pb2.CandidateAnswer,
    FrameType.STREAM_CHECKPOINT: orp_pb2.StreamCheckpoint,
}


def _client_bidi(stream_id: int) -> bool:
    return stream_id % 4 == 0


class _Opening:
    """Reads exactly one frame off the start of a stream and keeps what follows."""

    __slots__ = ("buf", "fed")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.fed = 0

    def feed(self, data: bytes) -> tuple[Frame, bytes, int] | None:
        """(frame, bytes after it, bytes the frame used) once complete, else None.

        Raises OrpError for a bad header or a frame over MAX_OPENING_FRAME.
        """
        self.fed += len(data)
        # Usual case: the whole frame comes in one chunk; cut it straight out
        # of ``data`` instead of copying through the buffer.
        buf: bytes | bytearray = data
        if self.buf:
            self.buf += data
            buf = self.buf
        if len(buf) < HEADER_SIZE:
            if buf is data:
                self.buf += data
            return None
        _, ftype, flags, length = decode_header(buf)
        if length > MAX_OPENING_FRAME:
            raise OrpError(f"relay: opening frame of {length} bytes is too large")
        end = HEADER_SIZE + length
        if len(buf) < end:
            if buf is data:
                self.buf += data
            return None
        frame = Frame(ftype, bytes(buf[HEADER_SIZE:end]), flags)
        rest = bytes(buf[end:])
        used = self.fed - len(rest)
        if buf is not data:
            self.buf = bytearray()
        return frame, rest, used


class _Phase(enum.IntEnum):
    """Where an OPEN_STREAM flow is."""

    OPENING = 0  # reading the consumer's first frame
    RESOLVING = 1  # waiting for the controller's Resolve
    PROVIDER_OPENING = 2  # INCOMING_STREAM being opened toward the provider
    ANSWER = 3  # waiting for the provider's STREAM_ACCEPT / STREAM_REJECT
    SPLICED = 4  # the shell's splice owns both streams
    DONE = 5
    RESUMING = 6  # a STREAM_RESUME / MIGRATE_TO_RELAY half waiting for its partner


@dataclass(eq=False, slots=True)
class _Agent:
    conn: int
    #: first URI SAN of the certificate, as written
    uri: str
    identity: Identity
    addr: Any
    hello_done: bool = False
    refused: bool = False
    control_done: bool = False
    decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(MAX_CONTROL_PAYLOAD))
    queued: deque[Frame] = field(default_factory=deque)
    held_control: bytearray = field(default_factory=bytearray)
    held_fin: bool = False
    #: data streams that arrived before HELLO_ACK: stream -> [(data, fin)]
    held_streams: dict[int, list[tuple[bytes, bool]]] = field(default_factory=dict)
    flows: set[int] = field(default_factory=set)
    #: the REGISTER at the controller right now
    registering: registry_pb2.RegisterServiceRequest | None = None
    #: desired registrations of this connection: service name -> local_addr
    services: dict[str, str] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        """A REGISTER is at the controller: later control input waits."""
        return self.registering is not None


@dataclass(eq=False, slots=True)
class _Flow:
    id: int
    conn: int
    stream: int
    consumer_uri: str
    #: the consumer's tenant (from its verified identity)
    tenant: str
    started: float
    phase: _Phase = _Phase.OPENING
    opening: _Opening = field(default_factory=_Opening)
    #: bytes of the consumer's opening frame not granted yet: for OPEN_STREAM
    #: they are granted with the answer, so the credit rides in its packet
    credit: int = 0
    pending: bytearray = field(default_factory=bytearray)
    fin: bool = False
    request: orp_pb2.OpenStream | None = None
    #: combined P2P mode and the caller-side relay mode (recorded; P2P and
    #: forward mode are not built, relay.md)
    p2p_mode: P2PMode = P2PMode.ALLOWED
    relay_mode: RelayMode = RelayMode.SPLICE
    provider_uri: str = ""
    provider_conn: int | None = None
    provider_stream: int | None = None
    #: reads the provider's answer (made when its first bytes come)
    provider_opening: _Opening | None = None
    provider_fin: bool = False
    #: early data: consumer bytes sent to the provider, not yet granted back
    early: int = 0
    #: early data: the consumer's FIN was forwarded to the provider
    early_fin: bool = False
    #: bytes of INCOMING_STREAM the provider has not acknowledged yet (their
    #: acknowledgement is no credit for the consumer)
    skip: int = 0
    #: stream id recorded in the pair table for this flow (0: none)
    pair_id: int = 0
    opened_at: float = 0.0
    #: the resume half this flow submitted (STREAM_RESUME / MIGRATE_TO_RELAY)
    half: Half | None = None
    #: (conn, stream) keys of this flow in the core's stream index
    keys: list[tuple[int, int]] = field(default_factory=list)


def _echo(stream_id: int, partner: Half) -> bytes:
    """STREAM_RESUME carrying the partner's counters (relay.md §8 step 4)."""
    msg = orp_pb2.StreamResume(
        stream_id=stream_id,
        my_position=partner.my_position,
        peer_ack_position=partner.peer_ack_position,
    )
    return encode_message(FrameType.STREAM_RESUME, msg)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class RelayCore:
    """Everything the relay decides, for every connection of one relay process.

    ``policy`` None disables policy and audit (the reference's empty
    ``--tenant``); otherwise every OPEN_STREAM is evaluated caller-side and
    callee-side, each evaluation through the decision cache and each giving
    one audit event on ``audit``.
    """

    def __init__(
        self,
        relay_id: str,
        region: str = "local",
        *,
        policy: PolicyEngine | None = None,
        audit: AuditQueue | None = None,
        metrics: Registry = REGISTRY,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = _wall_ms,
        resume_window: float = RESUME_WINDOW_S,
        resolve_ttl: float = RESOLVE_TTL_S,
    ) -> None:
        self.relay_id = relay_id
        self.region = region
        self.policy = policy
        self.audit = audit
        self.cache: DecisionCache[Decision] = DecisionCache()
        self.clock = clock
        self.wall_ms = wall_ms
        self.local = LocalAgents()
        self.chooser = ProviderChooser(relay_id, self.local)
        self.pairs = PairTable()
        self.matcher = ResumeMatcher(resume_window)
        self.resolved: ResolveCache[list[registry_pb2.Provider]] = ResolveCache(resolve_ttl)
        #: (tenant, agent URI) whose DeregisterAgent failed for want of a controller
        self._deregs: set[tuple[str, str]] = set()
        self._agents: dict[int, _Agent] = {}
        self._flows: dict[int, _Flow] = {}
        self._streams: dict[tuple[int, int], _Flow] = {}
        #: controller call or provider stream open in progress: token ->
        #: (kind, agent conn or flow id, what the answer needs: see ``_token``)
        self._tokens: dict[int, tuple[str, int, Any]] = {}
        self._next_token = 1
        self._next_flow = 1
        m = metrics
        self.m_agents = m.gauge("agents_connected")
        self.m_refused = m.counter("connections_refused")
        self.m_active = m.gauge("stream_active")
        self.m_opens = m.counter("stream_opens")
        self.m_rejects = m.counter("stream_rejects")
        self._m = m
        self._m_rejects_by_code: dict[int, Counter] = {}
        self.m_duration = m.histogram("stream_open_duration")
        self.m_setup = m.histogram("stream_setup_duration")
        self.m_eval = m.histogram("policy_eval_duration")
        self.m_hits = m.counter("policy_cache_hits")
        self.m_misses = m.counter("policy_cache_misses")
        self.m_resumed = m.counter("resume_matched")
        self.m_resume_timeouts = m.counter("resume_timeouts")
        self.m_resume_refused = m.counter("resume_refused")
        self.m_resume_pending = m.gauge("resume_pending")
        self.m_stale = m.counter("resolve_stale_served")
        self.m_deferred = m.counter("controller_deferred")
        self.m_forwarded = m.counter("bytes_forwarded")  # early data; the splice counts the rest

    # -- introspection (tests, debug) -------------------------------------

    @property
    def flows(self) -> int:
        """OPEN_STREAM flows in progress or spliced."""
        return len(self._flows)

    def agent_uri(self, conn: int) -> str | None:
        """The identity of an accepted connection, or None."""
        agent = self._agents.get(conn)
        return None if agent is None else agent.uri

    # -- policy -------------------------------------------------------------

    def policy_changed(self) -> None:
        """A policy rule changed: cached decisions may be wrong, drop them."""
        self.cache.flush()

    def evaluate(self, caller: str, target: str, method: str) -> Decision:
        """Decide (caller, target, method) through the cache; queue one audit event.

        Only meaningful with policy enabled (raises AssertionError otherwise).
        """
        assert self.policy is not None
        t0 = time.perf_counter_ns()
        key = (caller, target, method)
        now = self.clock()
        decision = self.cache.get(key, now)
        if decision is None:
            self.m_misses.inc()
            decision = self.policy.decide(tenant_of(caller), caller, target, method, self.wall_ms())
            self.cache.put(key, decision, now)
        else:
            self.m_hits.inc()
        self.m_eval.observe_ns(time.perf_counter_ns() - t0)
        if self.audit is not None:
            self.audit.put(audit_event(caller, target, method, decision, self.wall_ms()))
        return decision

    # -- connections --------------------------------------------------------

    def connection_verified(self, conn: int, peer_uri: str | None, addr: Any) -> list[Action]:
        """A connection's certificate verified; accept it on the agent path or close it."""
        if peer_uri is None:
            return self._refuse(conn, "missing identity")
        try:
            identity = parse(peer_uri)
        except IdentityError as exc:
            return self._refuse(conn, f"bad identity URI: {exc}")
        if identity.role is Role.RELAY:
            return self._refuse(conn, "relay peers are not served (no inter-relay forwarding)")
        if identity.role is not Role.AGENT:
            return self._refuse(conn, f"{identity.role} identities may not connect as agents")
        self._agents[conn] = _Agent(conn, peer_uri, identity, addr)
        return []

    def connection_closed(self, conn: int) -> list[Action]:
        """The connection ended: abort its unspliced flows, deregister the agent."""
        agent = self._agents.pop(conn, None)
        if agent is None:
            return []
        actions: list[Action] = []
        for fid in sorted(agent.flows):
            flow = self._flows.get(fid)
            if flow is None or flow.phase is _Phase.SPLICED:
                continue  # a splice sees the closed connection itself
            actions += self._leg_lost(flow, consumer=flow.conn == conn)
        if agent.hello_done:
            self.m_agents.dec()
            if self.local.remove(agent.uri, conn):
                log.info("agent disconnected", extra=kv(agent=agent.uri))
                actions.append(self._deregister(agent.identity.tenant, agent.uri))
        return actions

    def _deregister(self, tenant: str, uri: str) -> CallController:
        token = self._token("deregister", 0, (tenant, uri))
        request = registry_pb2.DeregisterAgentRequest(
            tenant=tenant, agent_uri=uri, relay_id=self.relay_id
        )
        return CallController(token, "DeregisterAgent", request)

    def controller_back(self) -> list[Action]:
        """The controller answers again after an outage: re-send the desired state.

        Deregistrations that failed are sent again, then every registration
        of every connected agent (RegisterService is an upsert, so a
        registration the controller kept is simply refreshed, and one it lost
        -- or never got, see ``controller_failed`` -- is restored).
        """
        actions: list[Action] = []
        deregs, self._deregs = self._deregs, set()
        for tenant, uri in sorted(deregs):
            if uri not in self.local:
                actions.append(self._deregister(tenant, uri))
        for agent in self._agents.values():
            if not agent.hello_done or self.local.get(agent.uri) != agent.conn:
                continue
            for name, local_addr in sorted(agent.services.items()):
                request = self._register_request(agent, name, local_addr)
                token = self._token("reregister", agent.conn, request)
                actions.append(CallController(token, "RegisterService", request))
        return actions

    def _register_request(
        self, agent: _Agent, service_name: str, local_addr: str
    ) -> registry_pb2.RegisterServiceRequest:
        return registry_pb2.RegisterServiceRequest(
            tenant=agent.identity.tenant,
            service_name=service_name,
            agent_uri=agent.uri,
            relay_id=self.relay_id,
            local_addr=local_addr,
        )

    def _refuse(self, conn: int, reason: str) -> list[Action]:
        self.m_refused.inc()
        log.warning("reject conn", extra=kv(conn=conn, reason=reason))
        agent = self._agents.get(conn)
        if agent is not None:
            agent.refused = True
        return [CloseConnection(conn, 0, reason)]

    # -- stream input -------------------------------------------------------

    def stream_data(self, conn: int, stream: int, data: bytes, fin: bool = False) -> list[Action]:
        """Bytes (and/or FIN) arrived on a stream the core reads."""
        agent = self._agents.get(conn)
        if agent is None or agent.refused:
            return []
        flow = self._streams.get((conn, stream))
        if flow is not None:
            return self._flow_data(flow, conn, stream, data, fin)
        if stream == CONTROL_STREAM:
            return self._control_data(agent, data, fin)
        if not _client_bidi(stream):
            return [StopReading(conn, stream)]
        if not data:
            return []  # a stream finished before saying anything, or a late FIN
        if not agent.hello_done:
            agent.held_streams.setdefault(stream, []).append((data, fin))
            return []
        return self._new_flow(agent, stream, data, fin)

    def stream_aborted(self, conn: int, stream: int) -> list[Action]:
        """The peer reset a stream or asked us to stop sending on it."""
        agent = self._agents.get(conn)
        if agent is None:
            return []
        if stream == CONTROL_STREAM:
            agent.control_done = True  # data streams keep working (relay.md §3)
            return []
        agent.held_streams.pop(stream, None)
        flow = self._streams.get((conn, stream))
        if flow is None or flow.phase is _Phase.SPLICED:
            return []
        consumer = (conn, stream) == (flow.conn, flow.stream)
        return [ResetStream(conn, stream), *self._leg_lost(flow, consumer=consumer)]

    # -- control stream -----------------------------------------------------

    def _control_data(self, agent: _Agent, data: bytes, fin: bool) -> list[Action]:
        if agent.control_done:
            return [Grant(agent.conn, CONTROL_STREAM, len(data))] if data else []
        if agent.busy:
            agent.held_control += data
            agent.held_fin |= fin
            return []
        return self._feed_control(agent, data, fin)

    def _feed_control(self, agent: _Agent, data: bytes, fin: bool) -> list[Action]:
        conn = agent.conn
        actions: list[Action] = [Grant(conn, CONTROL_STREAM, len(data))] if data else []
        try:
            frames = agent.decoder.feed(data)
            if fin:
                agent.decoder.close()
        except OrpError as exc:
            frames = []
            if exc.closes_connection:  # an oversized control frame header (FrameTooLarge)
                return actions + self._refuse(conn, f"control stream: {exc}")
            if not agent.hello_done:
                return actions + self._refuse(conn, f"bad HELLO: {exc}")
            log.info("control stream ended", extra=kv(agent=agent.uri, err=str(exc)))
            agent.control_done = True
            return actions + [StopReading(conn, CONTROL_STREAM)]
        agent.queued.extend(frames)
        actions += self._run_control(agent)
        if fin and not agent.refused:
            if not agent.hello_done:
                return actions + self._refuse(conn, "control stream ended before HELLO")
            agent.control_done = True
        return actions

    def _run_control(self, agent: _Agent) -> list[Action]:
        actions: list[Action] = []
        while agent.queued and not agent.busy and not agent.refused:
            frame = agent.queued.popleft()
            if agent.hello_done:
                actions += self._control_frame(agent, frame)
            else:
                actions += self._hello(agent, frame)
        return actions

    def _resume_control(self, agent: _Agent) -> list[Action]:
        """A REGISTER finished: run what waited behind it."""
        actions = self._run_control(agent)
        if not agent.busy and (agent.held_control or agent.held_fin):
            data, fin = bytes(agent.held_control), agent.held_fin
            agent.held_control, agent.held_fin = bytearray(), False
            actions += self._feed_control(agent, data, fin)
        return actions

    def _hello(self, agent: _Agent, frame: Frame) -> list[Action]:
        conn = agent.conn
        if frame.type != FrameType.HELLO:
            return self._refuse(conn, f"first control frame is {frame.type:#05x}, not HELLO")
        try:
            hello = decode_message(frame, FrameType.HELLO, orp_pb2.Hello)
        except OrpError as exc:
            return self._refuse(conn, f"bad HELLO: {exc}")
        if hello.agent_uri != agent.uri:
            return self._refuse(conn, "HELLO uri mismatch")
        agent.hello_done = True
        self.local.add(agent.uri, conn)
        # back before the controller was: its old registrations must not be
        # deregistered later, over the ones it is about to replay
        self._deregs.discard((agent.identity.tenant, agent.uri))
        self.m_agents.inc()
        log.info("agent connected", extra=kv(agent=agent.uri, conn=conn))
        actions: list[Action] = [
            Send(conn, CONTROL_STREAM, encode_message(FrameType.HELLO_ACK, orp_pb2.HelloAck()))
        ]
        held, agent.held_streams = agent.held_streams, {}
        for stream, chunks in sorted(held.items()):
            for data, fin in chunks:
                actions += self.stream_data(conn, stream, data, fin)
        return actions

    def _control_frame(self, agent: _Agent, frame: Frame) -> list[Action]:
        conn = agent.conn
        ftype = frame.type
        if ftype == FrameType.REGISTER:
            try:
                reg = decode_message(frame, FrameType.REGISTER, orp_pb2.Register)
            except OrpError as exc:
                log.warning("bad REGISTER", extra=kv(agent=agent.uri, err=str(exc)))
                return []
            token = self._token("register", conn)
            request = self._register_request(agent, reg.service_name, reg.local_addr)
            agent.registering = request
            return [CallController(token, "RegisterService", request)]
        if ftype == FrameType.PING:
            return [Send(conn, CONTROL_STREAM, encode_frame(FrameType.PONG))]
        if ftype == FrameType.OBSERVED_ADDR_QUERY:
            return self._observed_addr(agent, frame)
        if ftype in _FORWARDED:
            return self._forward_control(agent, frame)
        if ftype == FrameType.MIGRATE_TO_P2P:
            # P2P bookkeeping (relay.md §9) is not built yet: nothing to note.
            return []
        log.warning("unexpected control frame", extra=kv(agent=agent.uri, type=ftype))
        return []

    def _observed_addr(self, agent: _Agent, frame: Frame) -> list[Action]:
        try:
            query = decode_message(frame, FrameType.OBSERVED_ADDR_QUERY, orp_pb2.ObservedAddrQuery)
        except OrpError:
            return []
        try:
            host, port = str(agent.addr[0]), int(agent.addr[1])
        except (TypeError, IndexError, ValueError):
            return []
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:") :]  # an IPv4 peer on a dual-stack socket
        resp = orp_pb2.ObservedAddrResp(request_id=query.request_id, ip=host, port=port)
        frame_out = encode_message(FrameType.OBSERVED_ADDR_RESP, resp)
        return [Send(agent.conn, CONTROL_STREAM, frame_out)]

    def _forward_control(self, agent: _Agent, frame: Frame) -> list[Action]:
        """Route a candidate/checkpoint frame to the other end of its pair (§12)."""
        try:
            msg: Any = decode_message(frame, frame.type, _FORWARDED[frame.type])
        except OrpError:
            return []
        pair = self.pairs.get(msg.stream_id)
        peer = pair.peer_of(agent.uri) if pair is not None else None
        peer_conn = self.local.get(peer) if peer is not None else None
        if peer_conn is None:
            log.debug("control forward: no peer", extra=kv(stream_id=msg.stream_id))
            return []
        # same type, flags and payload bytes as received (relay.md §12 step 4)
        raw = encode_frame(frame.type, frame.payload, frame.flags)
        return [Send(peer_conn, CONTROL_STREAM, raw)]

    # -- controller results -------------------------------------------------

    def _token(self, kind: str, ref: int, extra: Any = None) -> int:
        """A token for one pending call; ``extra`` is kept for its answer:
        (tenant, URI) for ``deregister``, the request for ``reregister``, the
        provider's conn for ``open``."""
        token = self._next_token
        self._next_token += 1
        self._tokens[token] = (kind, ref, extra)
        return token

    def controller_replied(self, token: int, response: Message) -> list[Action]:
        """The RPC of ``token`` succeeded with ``response``."""
        entry = self._tokens.pop(token, None)
        if entry is None:
            return []
        kind, ref, _ = entry
        if kind in ("deregister", "reregister"):
            return []
        if kind == "register":
            agent = self._agents.get(ref)
            if agent is None or agent.refused:
                return []
            assert isinstance(response, registry_pb2.RegisterServiceResponse)
            return self._registered(agent, response.service_id)
        flow = self._flows.get(ref)
        if flow is None or flow.phase is not _Phase.RESOLVING:
            return []
        assert isinstance(response, registry_pb2.ResolveResponse)
        providers = list(response.providers)
        req = flow.request
        assert req is not None
        key = (flow.tenant, req.target_service)
        self.resolved.put(key, providers, self.clock())
        return self._resolved(flow, providers)

    def _registered(self, agent: _Agent, service_id: str) -> list[Action]:
        request, agent.registering = agent.registering, None
        if request is not None:
            agent.services[request.service_name] = request.local_addr
            self.local.provide(request.tenant, request.service_name, agent.uri)
        ack = orp_pb2.RegisterAck(service_id=service_id)
        actions: list[Action] = [
            Send(agent.conn, CONTROL_STREAM, encode_message(FrameType.REGISTER_ACK, ack))
        ]
        return actions + self._resume_control(agent)

    def controller_failed(self, token: int, error: ControllerError) -> list[Action]:
        """The RPC of ``token`` failed."""
        entry = self._tokens.pop(token, None)
        if entry is None:
            return []
        kind, ref, extra = entry
        transient = error.status in TRANSIENT
        if kind == "deregister":
            tenant, uri = extra
            if transient and uri not in self.local:
                self.m_deferred.inc()
                self._deregs.add((tenant, uri))  # sent again by controller_back
            return []
        if kind == "reregister":
            retried: registry_pb2.RegisterServiceRequest = extra
            agent = self._agents.get(ref)
            if not transient and agent is not None:
                log.warning(
                    "registration refused on retry",
                    extra=kv(agent=agent.uri, service=retried.service_name, err=error.reason),
                )
                agent.services.pop(retried.service_name, None)
                self.local.withdraw(retried.tenant, retried.service_name, agent.uri)
            return []
        if kind == "register":
            agent = self._agents.get(ref)
            if agent is None or agent.refused:
                return []
            request = agent.registering
            if transient and request is not None and request.service_name:
                # Controller unreachable: acknowledge with the id it would give
                # (``tenant/name``) and keep the registration in the desired
                # state; controller_back() sends it when the controller returns.
                self.m_deferred.inc()
                log.warning(
                    "register deferred: controller unreachable",
                    extra=kv(agent=agent.uri, service=request.service_name, err=error.reason),
                )
                return self._registered(agent, f"{request.tenant}/{request.service_name}")
            agent.registering = None
            refusal = register_refusal(error)
            log.warning(
                "register rejected",
                extra=kv(agent=agent.uri, status=error.status, err=error.reason),
            )
            # The reference sends nothing and the agent hangs (relay.md §17 Q2);
            # we answer with a STREAM_REJECT on the control stream instead.
            actions: list[Action] = [Send(ref, CONTROL_STREAM, reject_frame(refusal))]
            return actions + self._resume_control(agent)
        flow = self._flows.get(ref)
        if flow is None or flow.phase is not _Phase.RESOLVING:
            return []
        if transient and flow.request is not None:
            key = (flow.tenant, flow.request.target_service)
            stale = self.resolved.stale(key, self.clock())
            if stale is not None:
                self.m_stale.inc()
                log.debug(
                    "resolve failed; using the cached answer",
                    extra=kv(service=key[1], status=error.status),
                )
                return self._resolved(flow, stale)
        log.warning("resolve failed", extra=kv(status=error.status, err=error.reason))
        if error.status == "NOT_FOUND":
            return self._reject(flow, NotFound())
        return self._reject(flow, Unavailable("controller unavailable"))

    def stream_opened(self, token: int, stream: int) -> list[Action]:
        """The OpenStream of ``token`` got QUIC stream ``stream`` (INCOMING_STREAM sent)."""
        entry = self._tokens.pop(token, None)
        if entry is None:
            return []
        _, ref, pconn = entry
        flow = self._flows.get(ref)
        if flow is None or flow.phase is not _Phase.PROVIDER_OPENING or pconn not in self._agents:
            return [ResetStream(pconn, stream)]
        flow.provider_stream = stream
        flow.phase = _Phase.ANSWER
        self._streams[(pconn, stream)] = flow
        flow.keys.append((pconn, stream))
        self._agents[pconn].flows.add(flow.id)
        if flow.early:  # early data that went out with INCOMING_STREAM
            self.m_forwarded.add(flow.early)
        if not flow.pending and (flow.early_fin or not flow.fin):
            return []
        # early data: what the consumer sent after OPEN_STREAM goes out now
        data, flow.pending = bytes(flow.pending), bytearray()
        return self._forward_early(flow, data, flow.fin)

    def _forward_early(self, flow: _Flow, data: bytes, fin: bool) -> list[Action]:
        """Consumer bytes (and FIN) straight to the provider, before its answer."""
        assert flow.provider_conn is not None and flow.provider_stream is not None
        if flow.early_fin:
            return []
        flow.early += len(data)
        flow.early_fin = fin
        if data:
            self.m_forwarded.add(len(data))
        return [Send(flow.provider_conn, flow.provider_stream, data, fin)]

    def stream_drained(self, conn: int, stream: int, n: int) -> list[Action]:
        """The peer acknowledged ``n`` bytes sent on a stream the core still owns.

        Only early data counts: acknowledged bytes of it are granted back to
        the consumer (the INCOMING_STREAM frame ahead of them is not).
        """
        flow = self._streams.get((conn, stream))
        if flow is None or flow.phase is not _Phase.ANSWER or stream != flow.provider_stream:
            return []
        n, flow.skip = acked_credit(n, flow.skip, flow.early)
        if n <= 0:
            return []
        flow.early -= n
        return [Grant(flow.conn, flow.stream, n)]

    def stream_open_failed(self, token: int) -> list[Action]:
        """The OpenStream of ``token`` failed (provider connection closing)."""
        entry = self._tokens.pop(token, None)
        if entry is None:
            return []
        flow = self._flows.get(entry[1])
        if flow is None or flow.phase is not _Phase.PROVIDER_OPENING:
            return []
        return self._reject(flow, BadGateway("provider stream open failed"))

    def splice_ended(self, flow_id: int) -> list[Action]:
        """Both directions of the splice of ``flow_id`` are over."""
        flow = self._flows.get(flow_id)
        if flow is not None:
            self._finish(flow)
        return []

    # -- OPEN_STREAM flow ---------------------------------------------------

    def _new_flow(self, agent: _Agent, stream: int, data: bytes, fin: bool) -> list[Action]:
        flow = _Flow(
            self._next_flow, agent.conn, stream, agent.uri, agent.identity.tenant, self.clock()
        )
        self._next_flow += 1
        self._flows[flow.id] = flow
        self._streams[(agent.conn, stream)] = flow
        flow.keys.append((agent.conn, stream))
        agent.flows.add(flow.id)
        self.m_active.inc()
        return self._flow_data(flow, agent.conn, stream, data, fin)

    def _flow_data(
        self, flow: _Flow, conn: int, stream: int, data: bytes, fin: bool
    ) -> list[Action]:
        if (conn, stream) == (flow.conn, flow.stream):
            if flow.phase is not _Phase.OPENING:
                flow.fin |= fin
                if flow.phase is _Phase.ANSWER:
                    return self._forward_early(flow, data, fin) if data or fin else []
                flow.pending += data
                return []
            try:
                got = flow.opening.feed(data)
            except OrpError as exc:
                log.warning("bad opening frame", extra=kv(err=str(exc)))
                return self._end(flow)
            if got is None:
                if fin:
                    flow.fin = True
                    return self._end(flow)
                return []
            frame, rest, used = got
            flow.pending += rest
            flow.fin = fin
            flow.credit = used
            return self._first_frame(flow, frame)
        # the provider's stream
        if flow.phase is not _Phase.ANSWER:
            return []
        try:
            if flow.provider_opening is None:
                flow.provider_opening = _Opening()
            got = flow.provider_opening.feed(data)
        except OrpError:
            return self._end(flow)
        if got is None:
            if fin:  # provider closed without answering: consumer gets EOF, no frame
                flow.provider_fin = True
                return self._end(flow)
            return []
        frame, rest, used = got
        flow.provider_fin = fin
        actions = [Grant(conn, stream, used)]
        if frame.type == FrameType.STREAM_ACCEPT:
            return actions + self._splice(flow, rest)
        if frame.type == FrameType.STREAM_REJECT:
            # the provider's code and reason are replaced (relay.md §17 Q3)
            return actions + self._reject(flow, Unavailable("provider rejected"))
        return actions + self._end(flow)

    def _first_frame(self, flow: _Flow, frame: Frame) -> list[Action]:
        if frame.type == FrameType.OPEN_STREAM:
            try:
                flow.request = decode_message(frame, FrameType.OPEN_STREAM, orp_pb2.OpenStream)
            except OrpError:
                return self._end(flow)
            self.m_opens.inc()
            flow.opened_at = self.clock()
            return self._open(flow)
        if frame.type in (FrameType.STREAM_RESUME, FrameType.MIGRATE_TO_RELAY):
            return self._credit(flow) + self._resume(flow, frame)
        log.warning("first frame not OPEN_STREAM", extra=kv(type=frame.type))
        return self._end(flow)

    def _open(self, flow: _Flow) -> list[Action]:
        req = flow.request
        assert req is not None
        if self.policy is not None:
            decision = self.evaluate(flow.consumer_uri, req.target_service, req.method)
            if not decision.allowed:
                return self._reject(flow, Denied("denied: " + decision.reason))
            flow.p2p_mode, flow.relay_mode = decision.p2p_mode, decision.relay_mode
        tenant = flow.tenant
        # Local-first: an agent connected here registered the service (we sent
        # its REGISTER_ACK), so the controller's answer would name it too; the
        # controller is asked only when there is none (docs/relay.md).
        chosen = self.chooser.choose_local(tenant, req.target_service)
        if chosen is not None:
            return self._to_provider(flow, chosen)
        flow.phase = _Phase.RESOLVING
        token = self._token("resolve", flow.id)
        request = registry_pb2.ResolveRequest(
            tenant=tenant, service_name=req.target_service, caller_region=self.region
        )
        return [CallController(token, "Resolve", request)]

    def _resolved(self, flow: _Flow, providers: list[registry_pb2.Provider]) -> list[Action]:
        req = flow.request
        assert req is not None
        try:
            chosen = self.chooser.choose(flow.tenant, req.target_service, providers)
        except NotFound as exc:
            return self._reject(flow, exc)
        return self._to_provider(flow, chosen)

    def _to_provider(self, flow: _Flow, chosen: Chosen) -> list[Action]:
        req = flow.request
        assert req is not None
        if chosen.conn is None:
            return self._reject(flow, BadGateway("inter-relay forwarding unavailable"))
        provider = chosen.uri
        if self.policy is not None:
            callee = self.evaluate(provider, flow.consumer_uri, req.method)
            if not callee.allowed:
                return self._reject(flow, Denied("denied (callee): " + callee.reason))
            flow.p2p_mode = combine_p2p(flow.p2p_mode, callee.p2p_mode)
        # Checked before INCOMING_STREAM goes out, so a colliding OPEN_STREAM
        # never bothers the provider (the reference opens its stream first).
        if not self.pairs.record(req.stream_id, flow.consumer_uri, provider):
            return self._reject(flow, Collision())
        flow.pair_id = req.stream_id
        flow.provider_uri = provider
        flow.provider_conn = chosen.conn
        flow.phase = _Phase.PROVIDER_OPENING
        incoming = orp_pb2.IncomingStream(
            target_service=req.target_service,
            method=req.method,
            source_agent_uri=flow.consumer_uri,
            stream_id=req.stream_id,
        )
        token = self._token("open", flow.id, chosen.conn)
        data = encode_message(FrameType.INCOMING_STREAM, incoming)
        flow.skip = len(data)
        if flow.pending or flow.fin:
            # early data so far rides behind INCOMING_STREAM in the same send
            # (counted in ``stream_opened``, once it went out)
            flow.early = len(flow.pending)
            flow.early_fin = flow.fin
            data += flow.pending
            flow.pending = bytearray()
        return [OpenStream(token, chosen.conn, data, flow.fin)]

    def _splice(self, flow: _Flow, provider_rest: bytes) -> list[Action]:
        req = flow.request
        assert req is not None and flow.provider_conn is not None
        assert flow.provider_stream is not None
        flow.phase = _Phase.SPLICED
        self.m_setup.observe(self.clock() - flow.opened_at)
        ready = encode_message(FrameType.STREAM_READY, orp_pb2.StreamReady(stream_id=req.stream_id))
        actions = self._credit(flow)
        actions.append(Send(flow.conn, CONTROL_STREAM, ready))
        # the consumer's bytes so far are already with the provider (early data)
        a = Leg(flow.conn, flow.stream, fin=flow.fin, sent=flow.early, fin_sent=flow.early_fin)
        b = Leg(
            flow.provider_conn,
            flow.provider_stream,
            provider_rest,
            flow.provider_fin,
            unacked=flow.skip,
        )
        actions.append(StartSplice(flow.id, a, b))
        # The provider's signal goes last: the transport flushes connections in
        # the order they were written to, so the provider's answer reaches the
        # consumer first (no observable order exists across two connections).
        if self.local.get(flow.provider_uri) == flow.provider_conn:
            actions.append(Send(flow.provider_conn, CONTROL_STREAM, ready))
        return actions

    # -- resume (relay.md §8-§9; resume.py) ---------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`timer` must run next (the core's clock), or None."""
        return self.matcher.next_deadline()

    def timer(self) -> list[Action]:
        """Time passed: end resume halves whose window is over."""
        return self._matched(self.matcher.expire(self.clock()))

    def _resume(self, flow: _Flow, frame: Frame) -> list[Action]:
        msg: Any
        try:
            if frame.type == FrameType.STREAM_RESUME:
                msg = decode_message(frame, FrameType.STREAM_RESUME, orp_pb2.StreamResume)
            else:
                msg = decode_message(frame, FrameType.MIGRATE_TO_RELAY, orp_pb2.MigrateToRelay)
        except OrpError:
            return self._end(flow)
        tenant = flow.tenant
        half = Half(
            flow.id,
            tenant,
            flow.consumer_uri,
            msg.stream_id,
            msg.my_position,
            msg.peer_ack_position,
            echo=frame.type == FrameType.STREAM_RESUME,
        )
        flow.half = half
        flow.phase = _Phase.RESUMING
        parties = None
        live = self.pairs.get(msg.stream_id) if msg.stream_id else None
        if live is not None and tenant_of(live.consumer) == tenant:
            parties = frozenset((live.consumer, live.provider))
        log.debug(
            "resume half",
            extra=kv(agent=flow.consumer_uri, stream_id=f"{msg.stream_id:016x}", type=frame.type),
        )
        return self._matched(self.matcher.submit(half, self.clock(), parties))

    def _matched(self, events: list[MatchEvent]) -> list[Action]:
        actions: list[Action] = []
        for event in events:
            if isinstance(event, HalvesMatched):
                actions += self._join(event.first, event.second)
                continue
            assert isinstance(event, HalfRefused | HalfExpired)
            flow = self._flows.get(event.half.handle)
            if flow is None:
                continue
            flow.half = None  # already out of the matcher
            if isinstance(event, HalfExpired):
                self.m_resume_timeouts.inc()
                window = self.matcher.window
                actions += self._reject(flow, ResumeExpired(f"resume: no peer within {window:g}s"))
            else:
                self.m_resume_refused.inc()
                actions += self._reject(flow, event.error)
        self.m_resume_pending.set(len(self.matcher))
        return actions

    def _join(self, h1: Half, h2: Half) -> list[Action]:
        """Two halves match: both echoes first, then exactly one splice (§8, Q1)."""
        f1 = self._flows[h1.handle]
        f2 = self._flows[h2.handle]
        f1.half = f2.half = None
        # f1 becomes the spliced flow and takes f2's stream as its second leg
        f1.provider_conn, f1.provider_stream = f2.conn, f2.stream
        f1.provider_uri, f1.provider_fin = f2.consumer_uri, f2.fin
        rest = bytes(f2.pending)
        self._streams[(f2.conn, f2.stream)] = f1
        f1.keys.append((f2.conn, f2.stream))
        agent2 = self._agents.get(f2.conn)
        if agent2 is not None:
            agent2.flows.discard(f2.id)
            agent2.flows.add(f1.id)
        del self._flows[f2.id]
        f2.phase = _Phase.DONE
        self.m_active.dec()
        # Record the pair so checkpoints and candidates for the resumed stream
        # are routable (the reference records none, relay.md §12); keep the
        # orientation of a live record of the same two agents.
        consumer, provider = h1.agent, h2.agent
        live = self.pairs.get(h1.stream_id)
        if live is not None and {live.consumer, live.provider} == {consumer, provider}:
            consumer, provider = live.consumer, live.provider
        if self.pairs.record(h1.stream_id, consumer, provider):
            f1.pair_id = h1.stream_id
        else:
            log.warning(
                "resumed stream id held by another pair; not routable",
                extra=kv(stream_id=f"{h1.stream_id:016x}"),
            )
        self.m_resumed.inc()
        log.debug(
            "stream resumed",
            extra=kv(stream_id=f"{h1.stream_id:016x}", a=h1.agent, b=h2.agent),
        )
        # An echo is the core's own frame on that leg: its acknowledgement
        # earns the other leg no credit (``unacked``, as INCOMING_STREAM's).
        e1 = _echo(h1.stream_id, h2) if h1.echo else b""
        e2 = _echo(h2.stream_id, h1) if h2.echo else b""
        actions: list[Action] = []
        if e1:
            actions.append(Send(f1.conn, f1.stream, e1))
        if e2:
            actions.append(Send(f2.conn, f2.stream, e2))
        f1.phase = _Phase.SPLICED
        a = Leg(f1.conn, f1.stream, bytes(f1.pending), f1.fin, unacked=len(e1))
        b = Leg(f2.conn, f2.stream, rest, f2.fin, unacked=len(e2))
        f1.pending = bytearray()
        actions.append(StartSplice(f1.id, a, b))
        return actions

    # -- endings ------------------------------------------------------------

    def _reject(self, flow: _Flow, err: RelayError) -> list[Action]:
        """Answer the consumer with one STREAM_REJECT and end the flow."""
        self.m_rejects.inc()
        by_code = self._m_rejects_by_code.get(err.code)
        if by_code is None:
            by_code = self._m_rejects_by_code[err.code] = self._m.counter(
                f"stream_rejects_{err.code}"
            )
        by_code.inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "stream rejected",
                extra=kv(consumer=flow.consumer_uri, code=err.code, reason=err.reason),
            )
        return self._end(flow, reject_frame(err))

    def _end(self, flow: _Flow, last: bytes = b"") -> list[Action]:
        """End the flow: the consumer reads ``last`` (a frame, or nothing), then EOF."""
        actions = self._close_consumer(flow, last)
        actions += self._drop_provider(flow, reset=False)
        self._finish(flow)
        return actions

    def _leg_lost(self, flow: _Flow, *, consumer: bool) -> list[Action]:
        """The consumer's (else the provider's) leg of an unspliced flow is gone: end it."""
        if consumer:
            actions = self._drop_provider(flow, reset=True)
        else:
            flow.provider_stream = None
            actions = self._close_consumer(flow)
        self._finish(flow)
        return actions

    def _close_consumer(self, flow: _Flow, last: bytes = b"") -> list[Action]:
        actions = self._credit(flow)
        actions.append(Send(flow.conn, flow.stream, last, fin=True))
        if not flow.fin:
            actions.append(StopReading(flow.conn, flow.stream))
        return actions

    def _credit(self, flow: _Flow) -> list[Action]:
        """Grant the consumer's opening frame (once)."""
        if not flow.credit:
            return []
        n, flow.credit = flow.credit, 0
        return [Grant(flow.conn, flow.stream, n)]

    def _drop_provider(self, flow: _Flow, *, reset: bool) -> list[Action]:
        conn, stream = flow.provider_conn, flow.provider_stream
        if conn is None or stream is None:
            return []
        flow.provider_stream = None
        if reset:
            return [ResetStream(conn, stream)]
        actions: list[Action] = []
        if not flow.early_fin:  # else the consumer's FIN went out as early data
            actions.append(Send(conn, stream, b"", fin=True))
        if not flow.provider_fin:
            actions.append(StopReading(conn, stream))
        return actions

    def _finish(self, flow: _Flow) -> None:
        if flow.phase is _Phase.DONE:
            return
        flow.phase = _Phase.DONE
        self._flows.pop(flow.id, None)
        for key in flow.keys:
            if self._streams.get(key) is flow:
                del self._streams[key]
        for conn in (flow.conn, flow.provider_conn):
            agent = self._agents.get(conn) if conn is not None else None
            if agent is not None:
                agent.flows.discard(flow.id)
        if flow.half is not None and self.matcher.withdraw(flow.id) is not None:
            self.m_resume_pending.set(len(self.matcher))
        now = self.clock()
        if flow.pair_id:
            pair = self.pairs.get(flow.pair_id)
            if pair is not None:
                # a resume of this stream may come within the window: only these
                # two agents may take part in it (resume.py)
                tenant = tenant_of(pair.consumer)
                self.matcher.remember(tenant, flow.pair_id, pair.consumer, pair.provider, now)
            self.pairs.forget(flow.pair_id)
        self.m_active.dec()
        self.m_duration.observe(now - flow.started)
