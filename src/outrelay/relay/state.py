"""The relay core's state: connections, flows, and how a flow ends.

:class:`CoreState` holds everything :class:`~outrelay.relay.core.RelayCore`
knows (one state object, as aioquic's ``QuicConnection``); the flows that act
on it live in modules of their own and are mixed into ``RelayCore``:

* ``control.py`` -- the control stream: HELLO, REGISTER, PING, forwarding;
  registrations at the controller;
* ``opening.py`` -- an OPEN_STREAM flow, from the consumer's first frame to
  the splice (policy, provider choice, INCOMING_STREAM, early data);
* ``resuming.py`` -- STREAM_RESUME / MIGRATE_TO_RELAY halves and their pairing;
* ``core.py`` -- the inputs the shell calls (connections, stream input,
  controller results) and the dispatch to the flows.

The endings (``_reject``, ``_end``, ``_finish``...) are here because every
flow uses them.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from outrelay.identity import Identity
from outrelay.observe import REGISTRY, Counter, Registry, kv
from outrelay.orp import (
    HEADER_SIZE,
    MAX_CONTROL_PAYLOAD,
    Frame,
    FrameDecoder,
    OrpError,
    decode_header,
)
from outrelay.policy import P2PMode, PolicyEngine, RelayMode
from outrelay.policy.engine import Decision
from outrelay.proto import orp_pb2, registry_pb2
from outrelay.relay.actions import (
    Action,
    CloseConnection,
    Grant,
    ResetStream,
    Send,
    StopReading,
)
from outrelay.relay.audit import AuditQueue, tenant_of
from outrelay.relay.cache import RESOLVE_TTL_S, DecisionCache, ResolveCache
from outrelay.relay.errors import RelayError, reject_frame
from outrelay.relay.pairs import PairTable
from outrelay.relay.registry import LocalAgents, ProviderChooser
from outrelay.relay.resume import RESUME_WINDOW_S, Half, ResumeMatcher

log = logging.getLogger("outrelay.relay")

#: QUIC id of the control stream (the first client-initiated bidirectional one).
CONTROL_STREAM = 0
#: Concurrent streams one caller identity may have to one provider identity
#: (across all of the caller's connections); more are refused with 503.
MAX_STREAMS_PER_CALLER = 256
#: Largest opening frame of a data stream we accept (well under the window,
#: so a peer cannot stall a stream by announcing a frame it may never send).
MAX_OPENING_FRAME = 64 * 1024


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
    #: (caller URI, provider URI) whose stream slot this flow holds, if any
    slot: tuple[str, str] | None = None


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class CoreState:
    """The state of :class:`~outrelay.relay.core.RelayCore` and the flow endings.

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
        max_streams_per_caller: int = MAX_STREAMS_PER_CALLER,
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
        self.max_streams_per_caller = max_streams_per_caller
        #: (caller URI, provider URI) -> streams held (fair share, see ``_take_slot``)
        self._slots: dict[tuple[str, str], int] = {}
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

    if TYPE_CHECKING:  # defined by the flow mixins of RelayCore

        def evaluate(self, caller: str, target: str, method: str) -> Decision: ...
        def stream_data(
            self, conn: int, stream: int, data: bytes, fin: bool = False
        ) -> list[Action]: ...
        def _resume(self, flow: _Flow, frame: Frame) -> list[Action]: ...

    def _refuse(self, conn: int, reason: str) -> list[Action]:
        self.m_refused.inc()
        log.warning("reject conn", extra=kv(conn=conn, reason=reason))
        agent = self._agents.get(conn)
        if agent is not None:
            agent.refused = True
        return [CloseConnection(conn, 0, reason)]

    def _token(self, kind: str, ref: int, extra: Any = None) -> int:
        """A token for one pending call; ``extra`` is kept for its answer:
        (tenant, URI) for ``deregister``, the request for ``reregister``, the
        provider's conn for ``open``."""
        token = self._next_token
        self._next_token += 1
        self._tokens[token] = (kind, ref, extra)
        return token

    # -- fair share -----------------------------------------------------------

    def _take_slot(self, flow: _Flow, caller: str, provider: str, *, force: bool = False) -> bool:
        """Count ``flow`` as one of ``caller``'s streams to ``provider``.

        False (and nothing counted) when the caller already holds
        ``max_streams_per_caller`` of them, unless ``force`` (a resumed stream
        takes its slot back whatever the count). The slot is given back when
        the flow ends (``_finish``), however it ends.
        """
        key = (caller, provider)
        held = self._slots.get(key, 0)
        if held >= self.max_streams_per_caller and not force:
            return False
        self._slots[key] = held + 1
        flow.slot = key
        return True

    def streams_held(self, caller: str, provider: str) -> int:
        """Streams ``caller`` has to ``provider`` right now (tests, debug)."""
        return self._slots.get((caller, provider), 0)

    def _give_slot(self, flow: _Flow) -> None:
        key, flow.slot = flow.slot, None
        if key is None:
            return
        held = self._slots[key] - 1
        if held:
            self._slots[key] = held
        else:
            del self._slots[key]

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
        self._give_slot(flow)
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
