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

REGISTER (OutRelay extension): ``relay.bind.check_register`` refuses a bad
service name (400) and, with policy on, a registration no bind rule of the
snapshot allows (403), with a STREAM_REJECT on the control stream, before
the controller is asked.

Controller outages: a Resolve that fails as unreachable falls back to the
last good answer (``ResolveCache``); an allowed REGISTER is acknowledged and kept;
``controller_back`` re-sends registrations and failed deregistrations.

Refusals are :class:`~errors.RelayError` subclasses carrying their reject
code; ``_reject`` is the one place they become STREAM_REJECT frames.

The code is split by flow (``state.py`` says which module holds what);
``RelayCore`` is the one state object, with the flows mixed in.
"""

from __future__ import annotations

import time
from typing import Any

from google.protobuf.message import Message

from outrelay.identity import IdentityError, Role, parse
from outrelay.observe import kv
from outrelay.policy.engine import Decision
from outrelay.proto import registry_pb2
from outrelay.relay.actions import Action, ResetStream, Send, StopReading
from outrelay.relay.audit import audit_event, tenant_of
from outrelay.relay.control import ControlFlow
from outrelay.relay.errors import (
    TRANSIENT,
    ControllerError,
    NotFound,
    Unavailable,
    register_refusal,
    reject_frame,
)
from outrelay.relay.opening import OpenFlow
from outrelay.relay.resuming import ResumeFlow
from outrelay.relay.state import (
    CONTROL_STREAM,
    MAX_OPENING_FRAME,
    _Agent,
    _client_bidi,
    _Phase,
    log,
)

__all__ = ["CONTROL_STREAM", "MAX_OPENING_FRAME", "RelayCore"]


class RelayCore(ControlFlow, OpenFlow, ResumeFlow):
    """Everything the relay decides, for every connection of one relay process.

    ``policy`` None disables policy and audit (the reference's empty
    ``--tenant``); otherwise every OPEN_STREAM is evaluated caller-side and
    callee-side, each evaluation through the decision cache and each giving
    one audit event on ``audit``.
    """

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

    # -- controller results -------------------------------------------------

    def controller_replied(self, token: int, response: Message) -> list[Action]:
        """The RPC of ``token`` succeeded with ``response``."""
        entry = self._tokens.pop(token, None)
        if entry is None:
            return []
        kind, ref, extra = entry
        if kind == "deregister":
            return self._deregistered(extra[1])
        if kind == "reregister":
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
                self.local.withdraw(retried.tenant, retried.service_name, agent.uri, agent.conn)
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

    def splice_ended(self, flow_id: int) -> list[Action]:
        """Both directions of the splice of ``flow_id`` are over."""
        flow = self._flows.get(flow_id)
        if flow is not None:
            self._finish(flow)
        return []
