"""A minimal in-test relay on outrelay.transport, for agent tests without the real relay.

It does what relay.md §3-§7 says the relay does with an agent's frames, and
nothing more: HELLO -> HELLO_ACK (URI checked), REGISTER -> REGISTER_ACK
(silence for names in ``refuse``), PING -> PONG, OPEN_STREAM -> 403 for
names in ``deny``, 404 for unknown services, else INCOMING_STREAM to the
provider, 503 when it rejects, and on STREAM_ACCEPT STREAM_READY to both
control streams and a splice; STREAM_CHECKPOINT is passed to the other end
of a spliced stream. Credit is granted on receipt (no backpressure).

With ``early=True`` it also does relay.md "Early data": what the consumer
writes after OPEN_STREAM follows INCOMING_STREAM to the provider at once
(recorded in ``early``), and a rejected consumer gets STREAM_REJECT + FIN
and STOP_SENDING, as the relay does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from outrelay.orp import HEADER_SIZE, FrameDecoder, FrameType, decode_message, encode_message
from outrelay.proto import orp_pb2 as pb
from outrelay.transport import (
    ConnectionClosed,
    Link,
    Server,
    StreamDataReceived,
    StreamReset,
    TransportConfig,
    serve,
)
from outrelay.transport import events as tev


def split_first_frame(buf: bytearray) -> tuple[int, bytes, bytes] | None:
    if len(buf) < HEADER_SIZE:
        return None
    length = int.from_bytes(buf[4:8], "big")
    if len(buf) < HEADER_SIZE + length:
        return None
    ftype = int.from_bytes(buf[:2], "big") & 0x7FF
    return ftype, bytes(buf[HEADER_SIZE : HEADER_SIZE + length]), bytes(buf[HEADER_SIZE + length :])


@dataclass
class Leg:
    conn: AgentConn
    qid: int
    buf: bytearray = field(default_factory=bytearray)
    peer: Leg | None = None
    first_done: bool = False
    fin: bool = False
    stream_id: int = 0
    consumer: Leg | None = None  # on a provider leg: who asked
    early_to: Leg | None = None  # on a consumer leg: the provider leg, before its answer


class AgentConn:
    def __init__(self, relay: FakeRelay, link: Link) -> None:
        self.relay = relay
        self.link = link
        self.control: int | None = None
        self.decoder = FrameDecoder()
        self.uri: str | None = None
        self.legs: dict[int, Leg] = {}

    def on_event(self, link: Link, event: tev.Event) -> None:
        if isinstance(event, StreamDataReceived):
            link.grant(event.stream_id, len(event.data))
            if self.control is None and event.stream_id % 4 == 0:
                self.control = event.stream_id
            if event.stream_id == self.control:
                for frame in self.decoder.feed(event.data):
                    self.control_frame(frame)
                return
            self.data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, StreamReset):
            leg = self.legs.get(event.stream_id)
            if leg is not None and leg.peer is not None:
                leg.peer.conn.link.reset_stream(leg.peer.qid, 0)
        elif isinstance(event, ConnectionClosed):
            self.relay.conns.discard(self)
            for name, conn in list(self.relay.services.items()):
                if conn is self:
                    del self.relay.services[name]

    def send_control(self, ftype: int, msg: object) -> None:
        assert self.control is not None
        self.link.send(self.control, encode_message(ftype, msg))  # type: ignore[arg-type]

    def control_frame(self, frame: object) -> None:
        ftype = frame.type  # type: ignore[attr-defined]
        if self.uri is None:
            hello = decode_message(frame, FrameType.HELLO, pb.Hello)  # type: ignore[arg-type]
            if hello.agent_uri != self.link.peer_uri:
                self.link.close(0, "")
                return
            self.uri = hello.agent_uri
            self.send_control(FrameType.HELLO_ACK, pb.HelloAck())
        elif ftype == FrameType.REGISTER:
            reg = decode_message(frame, FrameType.REGISTER, pb.Register)  # type: ignore[arg-type]
            self.relay.registers.append((reg.service_name, reg.local_addr))
            if reg.service_name in self.relay.refuse:
                return
            self.relay.services[reg.service_name] = self
            self.send_control(
                FrameType.REGISTER_ACK, pb.RegisterAck(service_id=f"acme/{reg.service_name}")
            )
        elif ftype == FrameType.PING:
            self.send_control(FrameType.PONG, pb.HelloAck())
        elif ftype == FrameType.STREAM_CHECKPOINT:
            cp = decode_message(frame, ftype, pb.StreamCheckpoint)  # type: ignore[arg-type]
            pair = self.relay.pairs.get(cp.stream_id, ())
            for other in pair:
                if other is not self and not other.link.closed:
                    other.send_control(FrameType.STREAM_CHECKPOINT, cp)

    def data(self, qid: int, data: bytes, fin: bool) -> None:
        leg = self.legs.get(qid)
        if leg is None:
            leg = self.legs[qid] = Leg(self, qid)
        if leg.first_done:
            if leg.peer is not None:
                self.relay.forward(leg, data, fin)
            elif leg.early_to is not None:
                self.relay.forward_early(leg, data, fin)
            else:
                leg.buf += data
                leg.fin = leg.fin or fin
            return
        leg.buf += data
        leg.fin = leg.fin or fin
        parsed = split_first_frame(leg.buf)
        if parsed is None:
            return
        ftype, payload, rest = parsed
        leg.first_done = True
        leg.buf = bytearray(rest)
        if qid % 4 == 0:
            self.relay.open_stream(leg, ftype, payload)
        else:
            self.relay.provider_answer(leg, ftype, payload)


class FakeRelay:
    def __init__(
        self,
        config: TransportConfig,
        *,
        refuse: set[str] | None = None,
        deny: set[str] | None = None,
        early: bool = False,
    ) -> None:
        self.config = config
        self.refuse = refuse or set()
        self.deny = deny or set()
        self.server: Server | None = None
        self.conns: set[AgentConn] = set()
        self.services: dict[str, AgentConn] = {}
        self.registers: list[tuple[str, str]] = []
        self.opened: list[pb.OpenStream] = []
        self.provider_rejects: list[tuple[int, str]] = []
        self.early_mode = early
        #: Spliced streams: ORP stream id -> (consumer, provider) connections (checkpoints).
        self.pairs: dict[int, tuple[AgentConn, AgentConn]] = {}
        #: Bytes that arrived with OPEN_STREAM (same read), per ORP stream id.
        self.with_open: dict[int, bytes] = {}
        #: Early data per ORP stream id: bytes forwarded before the provider answered.
        self.early: dict[int, bytearray] = {}

    async def start(self, port: int = 0) -> int:
        self.server = await serve("127.0.0.1", port, self.config, self._on_link)
        return self.server.port

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _on_link(self, link: Link) -> None:
        conn = AgentConn(self, link)
        self.conns.add(conn)
        link.on_event = conn.on_event

    def reject(self, leg: Leg, code: int, reason: str) -> None:
        leg.conn.link.send(
            leg.qid,
            encode_message(FrameType.STREAM_REJECT, pb.StreamReject(code=code, reason=reason)),
            end_stream=True,
        )
        if self.early_mode and not leg.fin:
            with contextlib.suppress(Exception):
                leg.conn.link.stop_stream(leg.qid, 0)

    def open_stream(self, leg: Leg, ftype: int, payload: bytes) -> None:
        if ftype != FrameType.OPEN_STREAM:
            leg.conn.link.send(leg.qid, b"", end_stream=True)
            return
        msg = pb.OpenStream()
        msg.ParseFromString(payload)
        self.opened.append(msg)
        leg.stream_id = msg.stream_id
        if msg.target_service in self.deny:
            self.reject(leg, 403, "denied: no matching rule")
            return
        provider = self.services.get(msg.target_service)
        if provider is None:
            self.reject(leg, 404, "service not found")
            return
        pqid = provider.link.open_stream()
        pleg = provider.legs[pqid] = Leg(provider, pqid, consumer=leg, stream_id=msg.stream_id)
        provider.link.send(
            pqid,
            encode_message(
                FrameType.INCOMING_STREAM,
                pb.IncomingStream(
                    target_service=msg.target_service,
                    method=msg.method,
                    source_agent_uri=leg.conn.uri,
                    stream_id=msg.stream_id,
                ),
            ),
        )
        self.with_open[msg.stream_id] = bytes(leg.buf)
        if self.early_mode:
            leg.early_to = pleg
            self.early[msg.stream_id] = bytearray()
            if leg.buf or leg.fin:
                data, leg.buf = bytes(leg.buf), bytearray()
                self.forward_early(leg, data, leg.fin)

    def forward_early(self, leg: Leg, data: bytes, fin: bool) -> None:
        pleg = leg.early_to
        assert pleg is not None
        self.early[leg.stream_id] += data
        with contextlib.suppress(Exception):
            pleg.conn.link.send(pleg.qid, data, end_stream=fin)

    def provider_answer(self, pleg: Leg, ftype: int, payload: bytes) -> None:
        cleg = pleg.consumer
        assert cleg is not None
        if ftype == FrameType.STREAM_REJECT:
            rej = pb.StreamReject()
            rej.ParseFromString(payload)
            self.provider_rejects.append((rej.code, rej.reason))
        if ftype != FrameType.STREAM_ACCEPT:
            cleg.early_to = None
            self.reject(cleg, 503, "provider rejected")
            with contextlib.suppress(Exception):
                pleg.conn.link.send(pleg.qid, b"", end_stream=True)
            return
        cleg.early_to = None
        ready = pb.StreamReady(stream_id=cleg.stream_id)
        cleg.conn.send_control(FrameType.STREAM_READY, ready)
        pleg.conn.send_control(FrameType.STREAM_READY, ready)
        cleg.peer, pleg.peer = pleg, cleg
        self.pairs[cleg.stream_id] = (cleg.conn, pleg.conn)
        if self.early_mode:
            cleg.fin = False  # its FIN, if any, went out as early data
        for leg in (cleg, pleg):
            if leg.buf or leg.fin:
                data, leg.buf = bytes(leg.buf), bytearray()
                self.forward(leg, data, leg.fin)

    def forward(self, leg: Leg, data: bytes, fin: bool) -> None:
        peer = leg.peer
        assert peer is not None
        if peer.conn.link.closed:
            return
        try:
            peer.conn.link.send(peer.qid, data, end_stream=fin)
        except Exception:
            pass
