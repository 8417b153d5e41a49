"""An OPEN_STREAM flow, from the consumer's first frame to the splice (relay.md §6-§7).

caller-side policy -> provider choice (an agent connected here that
registered the service, else Resolve at the controller) -> callee-side
policy -> pair record (409 on collision) -> INCOMING_STREAM to the provider
-> its STREAM_ACCEPT / STREAM_REJECT -> STREAM_READY on both control streams
-> splice. Early data is described in ``core.py``.
"""

from __future__ import annotations

from outrelay.observe import kv
from outrelay.orp import Frame, FrameType, OrpError, decode_message, encode_message
from outrelay.policy import combine_p2p
from outrelay.proto import orp_pb2, registry_pb2
from outrelay.relay.actions import (
    Action,
    CallController,
    Grant,
    Leg,
    OpenStream,
    ResetStream,
    Send,
    StartSplice,
    acked_credit,
)
from outrelay.relay.errors import (
    BadGateway,
    CallerLimit,
    Collision,
    Denied,
    NotFound,
    ProviderBusy,
    Unavailable,
)
from outrelay.relay.registry import Chosen
from outrelay.relay.state import CONTROL_STREAM, CoreState, _Agent, _Flow, _Opening, _Phase, log


class OpenFlow(CoreState):
    """The OPEN_STREAM flow and its early data."""

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

    def stream_open_failed(self, token: int, *, busy: bool = False) -> list[Action]:
        """The OpenStream of ``token`` failed: the provider connection is closing,
        or (``busy``) it allows no more concurrent streams now (503 at once,
        rather than a stream QUIC would queue until the provider frees one)."""
        entry = self._tokens.pop(token, None)
        if entry is None:
            return []
        flow = self._flows.get(entry[1])
        if flow is None or flow.phase is not _Phase.PROVIDER_OPENING:
            return []
        if busy:
            return self._reject(flow, ProviderBusy())
        return self._reject(flow, BadGateway("provider stream open failed"))

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
        # Fair share: one caller cannot hold the provider's streams (finding 3).
        if not self._take_slot(flow, flow.consumer_uri, provider):
            return self._reject(flow, CallerLimit())
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
        if flow.provider_conn in self._agents:
            actions.append(Send(flow.provider_conn, CONTROL_STREAM, ready))
        return actions
