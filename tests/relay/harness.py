"""An in-memory world around ``RelayCore``: fake controller, recorded actions.

Agents are connection numbers; what the core sends is collected per
(conn, stream) and decoded back into frames. The fake controller answers
``CallController`` at once (or keeps the call pending when ``hold`` is set).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from outrelay.observe import Registry
from outrelay.orp import Frame, FrameDecoder, FrameType, encode_frame, encode_message
from outrelay.policy import Action as RuleAction
from outrelay.policy import PolicyEngine, Rule
from outrelay.proto import orp_pb2, registry_pb2
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
from outrelay.relay.audit import AuditQueue
from outrelay.relay.core import RelayCore
from outrelay.relay.errors import ControllerError

RELAY_ID = "relay-test"


def agent_uri(tenant: str = "acme") -> str:
    return f"outrelay://{tenant}/agent/{uuid.uuid4()}"


def bind_rule(uri: str, service: str, tenant: str = "acme") -> Rule:
    """An ALLOW bind rule: ``uri`` may provide ``service``."""
    return Rule(f"bind-{uuid.uuid4()}", tenant, uri, service, action=RuleAction.BIND)


def frame(ftype: int, msg: Message | None = None) -> bytes:
    return encode_frame(ftype) if msg is None else encode_message(ftype, msg)


@dataclass
class FakeController:
    services: dict[tuple[str, str], list[registry_pb2.Provider]] = field(
        default_factory=lambda: defaultdict(list)
    )
    calls: list[CallController] = field(default_factory=list)
    fail: dict[str, ControllerError] = field(default_factory=dict)
    hold: bool = False

    def answer(self, call: CallController) -> Message | ControllerError:
        if call.method in self.fail:
            return self.fail[call.method]
        req: Any = call.request
        if call.method == "RegisterService":
            providers = self.services[(req.tenant, req.service_name)]
            providers[:] = [p for p in providers if p.agent_uri != req.agent_uri]
            providers.append(
                registry_pb2.Provider(
                    service_id=f"{req.tenant}/{req.service_name}",
                    agent_uri=req.agent_uri,
                    relay_id=req.relay_id,
                )
            )
            return registry_pb2.RegisterServiceResponse(
                service_id=f"{req.tenant}/{req.service_name}"
            )
        if call.method == "Resolve":
            return registry_pb2.ResolveResponse(
                providers=self.services.get((req.tenant, req.service_name), [])
            )
        if call.method == "DeregisterAgent":
            for providers in self.services.values():
                providers[:] = [p for p in providers if p.agent_uri != req.agent_uri]
            return registry_pb2.DeregisterAgentResponse()
        raise AssertionError(call.method)


class World:
    def __init__(
        self, policy: PolicyEngine | None = None, audit_depth: int = 1024, **core: Any
    ) -> None:
        self.now = 1000.0
        self.metrics = Registry()
        self.audit = AuditQueue(audit_depth, registry=self.metrics) if policy is not None else None
        self.core = RelayCore(
            RELAY_ID,
            "local",
            policy=policy,
            audit=self.audit,
            metrics=self.metrics,
            clock=lambda: self.now,
            wall_ms=lambda: int(self.now * 1000),
            **core,
        )
        self.controller = FakeController()
        self.sent: dict[tuple[int, int], bytearray] = defaultdict(bytearray)
        self.fin: set[tuple[int, int]] = set()
        self.granted: dict[tuple[int, int], int] = defaultdict(int)
        self.stopped: set[tuple[int, int]] = set()
        self.reset: set[tuple[int, int]] = set()
        self.closed: dict[int, str] = {}
        self.splices: list[StartSplice] = []
        self.pending_calls: list[CallController] = []
        self._next_conn = 1
        self._server_streams: dict[int, int] = defaultdict(lambda: 1)
        self.opened: dict[int, list[int]] = defaultdict(list)

    # -- applying actions ---------------------------------------------------

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                key = (action.conn, action.stream)
                assert key not in self.fin, f"send after FIN on {key}"
                self.sent[key] += action.data
                if action.fin:
                    self.fin.add(key)
            elif isinstance(action, Grant):
                self.granted[(action.conn, action.stream)] += action.n
            elif isinstance(action, StopReading):
                self.stopped.add((action.conn, action.stream))
            elif isinstance(action, ResetStream):
                self.reset.add((action.conn, action.stream))
            elif isinstance(action, CloseConnection):
                self.closed[action.conn] = action.reason
            elif isinstance(action, CallController):
                self.controller.calls.append(action)
                if self.controller.hold and action.token is not None:
                    self.pending_calls.append(action)
                else:
                    self.reply(action)
            elif isinstance(action, OpenStream):
                sid = self._server_streams[action.conn]
                self._server_streams[action.conn] += 4
                self.opened[action.conn].append(sid)
                self.sent[(action.conn, sid)] += action.data
                if action.fin:
                    self.fin.add((action.conn, sid))
                self.apply(self.core.stream_opened(action.token, sid))
            elif isinstance(action, StartSplice):
                self.splices.append(action)
            else:
                raise AssertionError(action)

    def reply(self, call: CallController) -> None:
        result = self.controller.answer(call)
        if call.token is None:
            return
        if isinstance(result, ControllerError):
            self.apply(self.core.controller_failed(call.token, result))
        else:
            self.apply(self.core.controller_replied(call.token, result))

    def release(self) -> None:
        calls, self.pending_calls = self.pending_calls, []
        self.controller.hold = False
        for call in calls:
            self.reply(call)

    # -- agents -------------------------------------------------------------

    def connect(self, uri: str | None = None, addr: Any = ("127.0.0.1", 50000)) -> tuple[int, str]:
        uri = uri or agent_uri()
        conn = self._next_conn
        self._next_conn += 1
        self.apply(self.core.connection_verified(conn, uri, addr))
        return conn, uri

    def data(self, conn: int, stream: int, data: bytes, fin: bool = False) -> None:
        self.apply(self.core.stream_data(conn, stream, data, fin))

    def hello(self, conn: int, uri: str) -> None:
        self.data(
            conn, 0, frame(FrameType.HELLO, orp_pb2.Hello(protocol_version="orp/1", agent_uri=uri))
        )

    def agent(self, tenant: str = "acme") -> tuple[int, str]:
        conn, uri = self.connect(agent_uri(tenant))
        self.hello(conn, uri)
        assert self.frames(conn, 0)[0].type == FrameType.HELLO_ACK
        return conn, uri

    def provider(self, service: str, tenant: str = "acme", *, bind: bool = True) -> tuple[int, str]:
        """An agent past HELLO whose REGISTER of ``service`` was acknowledged.

        With policy on, ``bind`` first adds a bind rule letting this agent
        provide ``service`` (closed world: without one the REGISTER is refused).
        """
        conn, uri = self.agent(tenant)
        if bind and self.core.policy is not None:
            self.core.policy.add(bind_rule(uri, service, tenant))
        self.data(conn, 0, frame(FrameType.REGISTER, orp_pb2.Register(service_name=service)))
        assert self.frames(conn, 0)[-1].type == FrameType.REGISTER_ACK
        return conn, uri

    def open(
        self, conn: int, stream: int, service: str, stream_id: int = 0, extra: bytes = b""
    ) -> None:
        msg = orp_pb2.OpenStream(target_service=service, stream_id=stream_id)
        self.data(conn, stream, frame(FrameType.OPEN_STREAM, msg) + extra)

    def open_to_provider(
        self, service: str = "svc", stream_id: int = 0, extra: bytes = b""
    ) -> tuple[int, int, int]:
        """A provider of ``service``, a consumer opening stream 4 to it: (pconn, cconn, sid)."""
        pconn, _ = self.provider(service)
        cconn, _ = self.agent()
        self.open(cconn, 4, service, stream_id, extra)
        return pconn, cconn, self.opened[pconn][-1]

    def frames(self, conn: int, stream: int) -> list[Frame]:
        return FrameDecoder().feed(bytes(self.sent[(conn, stream)]))

    def reject_of(self, conn: int, stream: int) -> tuple[int, str]:
        frames = self.frames(conn, stream)
        assert [f.type for f in frames] == [FrameType.STREAM_REJECT], frames
        msg = orp_pb2.StreamReject.FromString(frames[0].payload)
        assert (conn, stream) in self.fin
        return msg.code, msg.reason
