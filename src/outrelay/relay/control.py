"""The control stream of an agent connection, and its registrations (relay.md §3-§5, §11, §12).

Control frames are handled strictly in order; while a REGISTER waits for the
controller, later control bytes are not even read. Registrations go to the
controller as RegisterService; an agent whose connection ends is
deregistered; after a controller outage the desired state is sent again.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from outrelay.observe import kv
from outrelay.orp import (
    Frame,
    FrameType,
    OrpError,
    decode_message,
    encode_frame,
    encode_message,
)
from outrelay.proto import orp_pb2, registry_pb2
from outrelay.relay.actions import (
    Action,
    CallController,
    CloseConnection,
    Grant,
    Send,
    StopReading,
)
from outrelay.relay.bind import check_register
from outrelay.relay.errors import reject_frame
from outrelay.relay.state import CONTROL_STREAM, CoreState, _Agent, log

#: Why the relay closes the oldest session of an identity that opened too many.
SUPERSEDED = "superseded by a newer session"

_FORWARDED: dict[int, type[Message]] = {
    FrameType.CANDIDATE_OFFER: orp_pb2.CandidateOffer,
    FrameType.CANDIDATE_ANSWER: orp_pb2.CandidateAnswer,
    FrameType.STREAM_CHECKPOINT: orp_pb2.StreamCheckpoint,
}


class ControlFlow(CoreState):
    """HELLO, REGISTER and the other control frames; registrations at the controller."""

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
            actions += self._reregister(agent)
        return actions

    def _reregister(self, agent: _Agent) -> list[Action]:
        """RegisterService again for every registration of this session."""
        if not agent.hello_done or agent.refused:
            return []
        actions: list[Action] = []
        for name, local_addr in sorted(agent.services.items()):
            request = self._register_request(agent, name, local_addr)
            token = self._token("reregister", agent.conn, request)
            actions.append(CallController(token, "RegisterService", request))
        return actions

    def _deregistered(self, uri: str) -> list[Action]:
        """A DeregisterAgent of ``uri`` came back done.

        A session of that identity that came up meanwhile may have registered
        before the deregistration reached the controller (two RPCs, no order
        between them): its registrations are sent again, so a live provider is
        never left deregistered.
        """
        actions: list[Action] = []
        for conn in self.local.sessions(uri):
            agent = self._agents.get(conn)
            if agent is not None:
                actions += self._reregister(agent)
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
        superseded = self.local.add(agent.uri, conn)
        # back before the controller was: its old registrations must not be
        # deregistered later, over the ones it is about to replay
        self._deregs.discard((agent.identity.tenant, agent.uri))
        self.m_agents.inc()
        log.info("agent connected", extra=kv(agent=agent.uri, conn=conn))
        actions: list[Action] = [
            Send(conn, CONTROL_STREAM, encode_message(FrameType.HELLO_ACK, orp_pb2.HelloAck()))
        ]
        for old in superseded:
            # the oldest of too many sessions of this identity; its own
            # registrations go with it, the newer sessions keep theirs
            log.info("agent session superseded", extra=kv(agent=agent.uri, conn=old))
            actions.append(CloseConnection(old, 0, SUPERSEDED))
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
            refusal = check_register(
                self.policy, agent.identity.tenant, agent.uri, reg.service_name, self.wall_ms()
            )
            if refusal is not None:
                log.warning("register rejected", extra=kv(agent=agent.uri, err=refusal.reason))
                return [Send(conn, CONTROL_STREAM, reject_frame(refusal))]
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

    def _registered(self, agent: _Agent, service_id: str) -> list[Action]:
        request, agent.registering = agent.registering, None
        if request is not None:
            agent.services[request.service_name] = request.local_addr
            self.local.provide(request.tenant, request.service_name, agent.uri, agent.conn)
        ack = orp_pb2.RegisterAck(service_id=service_id)
        actions: list[Action] = [
            Send(agent.conn, CONTROL_STREAM, encode_message(FrameType.REGISTER_ACK, ack))
        ]
        return actions + self._resume_control(agent)
