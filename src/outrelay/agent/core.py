"""The agent side of ORP, sans-IO: bytes and time in, events and bytes out.

How this works
--------------
:class:`AgentProtocol` knows one relay session: the control stream (the first
stream the agent opens) and every data stream, each keyed by its QUIC stream
id (``qid``). It never touches a socket or the event loop. The shell
(:mod:`outrelay.agent.client`) feeds it what the QUIC connection delivers
(:meth:`receive`, :meth:`handle_timer`) and sends the bytes its commands
return (:meth:`hello`, :meth:`register`, :meth:`open_stream`, ...).

Control stream: HELLO, then HELLO_ACK must be the first frame back (anything
else is a :class:`ProtocolViolated`). REGISTER_ACKs are matched to pending
REGISTERs by the service id's ``/<name>`` suffix, else in order; a REGISTER
unanswered for ``register_timeout`` seconds gives :class:`RegisterTimedOut`;
a STREAM_REJECT on the control stream answers the oldest pending REGISTER
(:class:`RegisterRejected`, an OutRelay relay's refusal)
(the relay answers a refused registration with silence).

Consumer data stream (we sent OPEN_STREAM): the relay never sends
STREAM_ACCEPT to a consumer. It either writes one STREAM_REJECT frame and
FIN, or splices, in which case STREAM_READY arrives on the control stream and
the stream carries application bytes. Inbound bytes are therefore held
(phase ``OPENING``) until one of:

* STREAM_READY for the stream id                 -> opened, cause ``ready``;
* held bytes that cannot start a STREAM_REJECT    -> opened, cause ``data``;
* a whole STREAM_REJECT frame                     -> rejected;
* FIN with nothing held                           -> aborted;
* ``ready_timeout`` without any of those          -> opened, cause ``timeout``
  (inter-relay paths send no STREAM_READY).

Outbound bytes need no wait (early data, relay.md "Early data"): the relay
forwards what follows OPEN_STREAM to the provider right after
INCOMING_STREAM, before the provider answers, and drops it on a reject (the
consumer still reads exactly one STREAM_REJECT, then EOF). Inbound bytes
are classified as above whether or not we wrote early.

Provider data stream (the relay opened it): the first frame must be
INCOMING_STREAM; bytes after it are application bytes (the consumer may
write before the splice). The shell answers with :meth:`accept_stream` or
:meth:`reject_stream`; STREAM_READY on the provider side is informational.

Resumed data stream (we sent STREAM_RESUME on a fresh stream after a
reconnect or a 0x101 reset, :meth:`resume_stream`): the first frame back is
the relay's echo, STREAM_RESUME with the partner's positions
(:class:`StreamResumed`; bytes after it are application bytes), or a
STREAM_REJECT (:class:`ResumeRejected`: 504 no partner within the window,
409 superseded, 403 not a party). No STREAM_READY comes for resumed streams.

Per-stream byte positions, the ring and the resume phases are
:mod:`outrelay.agent.resume`; the shell keeps one per stream and sends
:meth:`checkpoint` frames on the control stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from outrelay.agent import events as ev
from outrelay.orp import (
    HEADER_SIZE,
    MAX_CONTROL_PAYLOAD,
    VERSION,
    FrameDecoder,
    FrameType,
    OrpError,
    decode_message,
    encode_frame,
    encode_message,
)
from outrelay.orp.messages import FrameLike
from outrelay.proto import orp_pb2 as pb
from outrelay.resume import new_stream_id

#: ``Hello.protocol_version``.
PROTOCOL_VERSION = "orp/1"
#: Seconds to wait for HELLO_ACK.
HELLO_TIMEOUT = 10.0
#: Seconds to wait for each REGISTER_ACK.
REGISTER_TIMEOUT = 10.0
#: Seconds a consumer stream waits for a sign of life before it is bridged anyway.
READY_TIMEOUT = 10.0
#: A held consumer prefix declaring a longer STREAM_REJECT payload is application data.
MAX_REJECT_PAYLOAD = 64 * 1024

_REJECT_WORD0 = (VERSION << 13) | FrameType.STREAM_REJECT


class Role(IntEnum):
    """Which side of a data stream we are."""

    CONSUMER = 0
    PROVIDER = 1
    RESUMED = 2


class Phase(IntEnum):
    """Where a data stream is.

    CONSUMER: OPENING -> OPEN | CLOSED.  PROVIDER: AWAIT_FIRST -> DECIDING ->
    OPEN | CLOSED.  RESUMED: RESUMING -> OPEN | CLOSED.  Every phase may go
    to CLOSED (reset, protocol error).
    """

    AWAIT_FIRST = 0
    OPENING = 1
    DECIDING = 2
    OPEN = 3
    CLOSED = 4
    RESUMING = 5


#: Legal phase changes (the table the data-stream FSM applies).
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.AWAIT_FIRST: frozenset({Phase.DECIDING, Phase.CLOSED}),
    Phase.OPENING: frozenset({Phase.OPEN, Phase.CLOSED}),
    Phase.DECIDING: frozenset({Phase.OPEN, Phase.CLOSED}),
    Phase.OPEN: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset({Phase.CLOSED}),
    Phase.RESUMING: frozenset({Phase.OPEN, Phase.CLOSED}),
}


class IllegalPhase(RuntimeError):
    """A data stream was asked to make a phase change the table forbids (our bug)."""


@dataclass
class _Data:
    role: Role
    phase: Phase
    stream_id: int = 0
    held: bytearray = field(default_factory=bytearray)
    #: an OPENING consumer stream is opened anyway ("timeout") at this time
    deadline: float = 0.0

    def move(self, to: Phase) -> None:
        if to not in TRANSITIONS[self.phase]:
            raise IllegalPhase(f"data stream: {self.phase.name} -> {to.name}")
        self.phase = to


class AgentProtocol:
    """One agent <-> relay session, without I/O.

    ``hello_timeout``, ``register_timeout`` and ``ready_timeout`` are seconds
    on the clock the caller passes as ``now``.
    """

    def __init__(
        self,
        agent_uri: str,
        *,
        hello_timeout: float = HELLO_TIMEOUT,
        register_timeout: float = REGISTER_TIMEOUT,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.agent_uri = agent_uri
        self.hello_timeout = hello_timeout
        self.register_timeout = register_timeout
        self.ready_timeout = ready_timeout
        self.control_qid: int | None = None
        self._control = FrameDecoder(MAX_CONTROL_PAYLOAD)
        self._hello_deadline: float | None = None
        self._acked = False
        self._broken = False
        self._registers: list[tuple[str, float]] = []
        self._streams: dict[int, _Data] = {}
        # ORP stream id -> qid, while OPENING: next_timer, asked after every
        # event, looks only at these streams' deadlines, not at all streams
        self._consumers: dict[int, int] = {}

    # -- state ------------------------------------------------------------

    @property
    def established(self) -> bool:
        """True once HELLO_ACK arrived (and the control stream is still sound)."""
        return self._acked and not self._broken

    def phase(self, qid: int) -> Phase | None:
        """The phase of data stream ``qid`` (``None``: unknown or forgotten)."""
        data = self._streams.get(qid)
        return None if data is None else data.phase

    def role(self, qid: int) -> Role | None:
        """Which side of data stream ``qid`` we are (``None``: unknown or forgotten)."""
        data = self._streams.get(qid)
        return None if data is None else data.role

    def stream_id(self, qid: int) -> int:
        """The ORP stream id of data stream ``qid`` (raises KeyError if unknown)."""
        return self._streams[qid].stream_id

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` must next run (``None``: nothing pending)."""
        times = [t for _, t in self._registers]
        if self._hello_deadline is not None:
            times.append(self._hello_deadline)
        times += (self._streams[qid].deadline for qid in self._consumers.values())
        return min(times, default=None)

    # -- commands (each returns the bytes to send) -------------------------

    def hello(self, control_qid: int, now: float) -> bytes:
        """Start the session on ``control_qid``; returns the HELLO frame."""
        if self.control_qid is not None:
            raise RuntimeError("agent: HELLO already sent")
        self.control_qid = control_qid
        self._hello_deadline = now + self.hello_timeout
        return encode_message(
            FrameType.HELLO, pb.Hello(protocol_version=PROTOCOL_VERSION, agent_uri=self.agent_uri)
        )

    def register(self, name: str, local_addr: str, now: float) -> bytes:
        """Returns a REGISTER frame for the control stream; the ACK becomes an event."""
        self._registers.append((name, now + self.register_timeout))
        return encode_message(
            FrameType.REGISTER, pb.Register(service_name=name, local_addr=local_addr)
        )

    def ping(self) -> bytes:
        """Returns a PING frame (empty payload) for the control stream."""
        return encode_frame(FrameType.PING)

    def open_stream(
        self, qid: int, target: str, now: float, *, method: str = "", stream_id: int = 0
    ) -> bytes:
        """Start a consumer stream on the fresh QUIC stream ``qid``; returns OPEN_STREAM.

        ``stream_id`` 0 draws a fresh id (never one of this session's open
        consumer streams). Read the id back with :meth:`stream_id`.
        """
        if qid in self._streams:
            raise ValueError(f"agent: QUIC stream {qid} is already in use")
        while stream_id == 0 or stream_id in self._consumers:
            stream_id = new_stream_id()
        self._streams[qid] = _Data(
            Role.CONSUMER, Phase.OPENING, stream_id, deadline=now + self.ready_timeout
        )
        self._consumers[stream_id] = qid
        return encode_message(
            FrameType.OPEN_STREAM,
            pb.OpenStream(target_service=target, method=method, stream_id=stream_id),
        )

    def resume_stream(
        self, qid: int, stream_id: int, my_position: int, peer_ack_position: int
    ) -> bytes:
        """Resume ``stream_id`` on the fresh QUIC stream ``qid``; returns STREAM_RESUME.

        Send nothing else on ``qid`` until :class:`StreamResumed` arrives.
        """
        if qid in self._streams:
            raise ValueError(f"agent: QUIC stream {qid} is already in use")
        self._streams[qid] = _Data(Role.RESUMED, Phase.RESUMING, stream_id)
        return encode_message(
            FrameType.STREAM_RESUME,
            pb.StreamResume(
                stream_id=stream_id, my_position=my_position, peer_ack_position=peer_ack_position
            ),
        )

    def checkpoint(self, stream_id: int, my_position: int, peer_ack_position: int) -> bytes:
        """Returns a STREAM_CHECKPOINT frame for the control stream."""
        return encode_message(
            FrameType.STREAM_CHECKPOINT,
            pb.StreamCheckpoint(
                stream_id=stream_id, my_position=my_position, peer_ack_position=peer_ack_position
            ),
        )

    def accept_stream(self, qid: int) -> bytes:
        """Accept an incoming stream; returns STREAM_ACCEPT (empty payload)."""
        self._streams[qid].move(Phase.OPEN)
        return encode_message(FrameType.STREAM_ACCEPT, pb.StreamAccept())

    def reject_stream(self, qid: int, code: int, reason: str) -> bytes:
        """Refuse an incoming stream; returns STREAM_REJECT (send it with FIN)."""
        data = self._streams.get(qid)
        if data is not None:
            data.move(Phase.CLOSED)
        return encode_message(FrameType.STREAM_REJECT, pb.StreamReject(code=code, reason=reason))

    def close_stream(self, qid: int) -> None:
        """Ignore whatever still arrives on ``qid`` (its stream was detached for resume)."""
        data = self._streams.get(qid)
        if data is not None and data.phase is not Phase.CLOSED:
            self._close(qid, data)

    def forget_stream(self, qid: int) -> None:
        """The shell is done with ``qid``; drop its state."""
        data = self._streams.pop(qid, None)
        if data is not None and self._consumers.get(data.stream_id) == qid:
            del self._consumers[data.stream_id]

    # -- inputs -----------------------------------------------------------

    def receive(self, qid: int, data: bytes, end_stream: bool, now: float) -> list[ev.Event]:
        """Bytes (and maybe FIN) arrived on QUIC stream ``qid``."""
        if qid == self.control_qid:
            return self._receive_control(data, end_stream)
        stream = self._streams.get(qid)
        if stream is None:
            if qid % 4 != 1:  # not server-initiated bidirectional: not a new incoming stream
                return []
            stream = self._streams[qid] = _Data(Role.PROVIDER, Phase.AWAIT_FIRST)
        phase = stream.phase
        if phase is Phase.OPEN or phase is Phase.DECIDING:  # past the first frame: app bytes
            out: list[ev.Event] = [ev.DataReceived(qid, data)] if data else []
            if end_stream:
                out.append(ev.StreamEnded(qid))
            return out
        if phase is Phase.CLOSED:  # reset, rejected or given up: ignore what still comes
            return []
        if stream.role is Role.RESUMED:
            return self._receive_resumed(qid, stream, data, end_stream)
        if stream.role is Role.CONSUMER:
            return self._receive_consumer(qid, stream, data, end_stream, now)
        return self._receive_provider(qid, stream, data, end_stream)

    def stream_reset(self, qid: int, error_code: int) -> list[ev.Event]:
        """The peer reset its sending side of ``qid`` (RESET_STREAM)."""
        if qid == self.control_qid:
            return self._violate(f"control stream reset by the relay (code {error_code})")
        stream = self._streams.get(qid)
        if stream is None or stream.phase is Phase.CLOSED:
            return []
        self._close(qid, stream)
        return [ev.StreamAborted(qid, f"reset by the relay (code {error_code:#x})", error_code)]

    def handle_timer(self, now: float) -> list[ev.Event]:
        """Fire the timeouts that are due at ``now``."""
        out: list[ev.Event] = []
        if self._hello_deadline is not None and now >= self._hello_deadline:
            self._hello_deadline = None
            self._broken = True
            out.append(ev.HelloTimedOut())
        due = [name for name, t in self._registers if now >= t]
        if due:
            self._registers = [(n, t) for n, t in self._registers if now < t]
            out += [ev.RegisterTimedOut(name) for name in due]
        for qid in list(self._consumers.values()):
            stream = self._streams[qid]
            if now >= stream.deadline:
                out += self._open_consumer(qid, stream, "timeout", False)
        return out

    # -- control stream ---------------------------------------------------

    def _violate(self, reason: str) -> list[ev.Event]:
        self._broken = True
        self._hello_deadline = None
        return [ev.ProtocolViolated(reason)]

    def _receive_control(self, data: bytes, end_stream: bool) -> list[ev.Event]:
        if self._broken:
            return []
        try:
            frames = self._control.feed(data) if data else []
            if end_stream:
                self._control.close()
        except OrpError as exc:
            return self._violate(f"control stream: {exc}")
        out: list[ev.Event] = []
        for frame in frames:
            out += self._control_frame(frame)
            if self._broken:
                return out
        if end_stream:
            out += self._violate("control stream closed by the relay")
        return out

    def _control_frame(self, frame: FrameLike) -> list[ev.Event]:
        ftype = frame.type
        if not self._acked:
            if ftype != FrameType.HELLO_ACK:
                return self._violate(f"expected HELLO_ACK, got frame type {ftype:#05x}")
            try:
                ack = decode_message(frame, FrameType.HELLO_ACK, pb.HelloAck)
            except OrpError as exc:
                return self._violate(f"bad HELLO_ACK: {exc}")
            self._acked = True
            self._hello_deadline = None
            return [ev.HelloAcknowledged(ack.session_id)]
        try:
            if ftype == FrameType.REGISTER_ACK:
                return self._register_ack(decode_message(frame, ftype, pb.RegisterAck))
            if ftype == FrameType.STREAM_READY:
                return self._stream_ready(decode_message(frame, ftype, pb.StreamReady).stream_id)
            if ftype == FrameType.PONG:
                return [ev.PongReceived()]
            if ftype == FrameType.STREAM_REJECT and self._registers:
                rej = decode_message(frame, ftype, pb.StreamReject)
                # the relay answers REGISTERs one at a time, in order
                name, _ = self._registers.pop(0)
                return [ev.RegisterRejected(name, rej.code, rej.reason)]
            if ftype == FrameType.OBSERVED_ADDR_RESP:
                resp = decode_message(frame, ftype, pb.ObservedAddrResp)
                return [ev.ObservedAddressReceived(resp.request_id, resp.ip, resp.port)]
            if ftype == FrameType.STREAM_CHECKPOINT:
                cp = decode_message(frame, ftype, pb.StreamCheckpoint)
                return [ev.CheckpointReceived(cp.stream_id, cp.my_position, cp.peer_ack_position)]
        except OrpError as exc:
            return [ev.ControlFrameIgnored(ftype, f"undecodable payload: {exc}")]
        return [ev.ControlFrameIgnored(ftype, "unexpected control frame")]

    def _register_ack(self, ack: pb.RegisterAck) -> list[ev.Event]:
        if not self._registers:
            return [ev.ControlFrameIgnored(FrameType.REGISTER_ACK, "REGISTER_ACK without REGISTER")]
        index = 0
        for i, (name, _) in enumerate(self._registers):
            if ack.service_id == name or ack.service_id.endswith("/" + name):
                index = i
                break
        name, _ = self._registers.pop(index)
        return [ev.ServiceRegistered(name, ack.service_id)]

    def _stream_ready(self, stream_id: int) -> list[ev.Event]:
        qid = self._consumers.get(stream_id)
        if qid is None:
            return [ev.StreamReadySignalled(stream_id)]
        stream = self._streams[qid]
        if stream.phase is not Phase.OPENING:
            return [ev.StreamReadySignalled(stream_id)]
        return self._open_consumer(qid, stream, "ready", False)

    # -- consumer streams -------------------------------------------------

    def _open_consumer(self, qid: int, stream: _Data, cause: str, fin: bool) -> list[ev.Event]:
        stream.move(Phase.OPEN)
        self._consumers.pop(stream.stream_id, None)
        out: list[ev.Event] = [ev.StreamOpened(qid, stream.stream_id, cause)]
        if stream.held:
            out.append(ev.DataReceived(qid, bytes(stream.held)))
            stream.held.clear()
        if fin:
            out.append(ev.StreamEnded(qid))
        return out

    def _close(self, qid: int, stream: _Data) -> None:
        stream.move(Phase.CLOSED)
        stream.held.clear()
        self._consumers.pop(stream.stream_id, None)

    def _receive_consumer(
        self, qid: int, stream: _Data, data: bytes, end_stream: bool, now: float
    ) -> list[ev.Event]:
        stream.held += data
        verdict = _classify(stream.held)
        if verdict == "data":
            return self._open_consumer(qid, stream, "data", end_stream)
        if isinstance(verdict, tuple):
            code, reason = verdict
            self._close(qid, stream)
            return [ev.StreamRejected(qid, stream.stream_id, code, reason)]
        if end_stream:  # "maybe" and nothing more will come
            if not stream.held:
                self._close(qid, stream)
                return [ev.StreamAborted(qid, "the relay closed the stream without an answer")]
            return self._open_consumer(qid, stream, "data", True)
        return []

    # -- resumed streams --------------------------------------------------

    def _receive_resumed(
        self, qid: int, stream: _Data, data: bytes, end_stream: bool
    ) -> list[ev.Event]:
        stream.held += data
        held = stream.held
        if len(held) >= HEADER_SIZE:
            word0, length = _header(held)
            ftype = word0 & 0x7FF
            if word0 >> 13 != VERSION or ftype not in (
                FrameType.STREAM_RESUME,
                FrameType.STREAM_REJECT,
            ):
                self._close(qid, stream)
                why = f"expected the STREAM_RESUME echo, got word {word0:#06x}"
                return [ev.StreamAborted(qid, why)]
            if length > MAX_REJECT_PAYLOAD:
                self._close(qid, stream)
                return [ev.StreamAborted(qid, f"resume answer of {length} bytes")]
            end = HEADER_SIZE + length
            if len(held) >= end:
                payload = bytes(held[HEADER_SIZE:end])
                rest = bytes(held[end:])
                held.clear()
                return self._resume_answer(qid, stream, ftype, payload, rest, end_stream)
        if end_stream:
            self._close(qid, stream)
            return [ev.StreamAborted(qid, "the relay closed the resume stream without an answer")]
        return []

    def _resume_answer(
        self, qid: int, stream: _Data, ftype: int, payload: bytes, rest: bytes, fin: bool
    ) -> list[ev.Event]:
        try:
            if ftype == FrameType.STREAM_REJECT:
                rej = pb.StreamReject.FromString(payload)
                self._close(qid, stream)
                return [ev.ResumeRejected(qid, stream.stream_id, rej.code, rej.reason)]
            echo = pb.StreamResume.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError
            self._close(qid, stream)
            return [ev.StreamAborted(qid, f"undecodable resume answer: {exc}")]
        if echo.stream_id != stream.stream_id:
            self._close(qid, stream)
            return [
                ev.StreamAborted(
                    qid, f"resume echo for stream {echo.stream_id:#x}, not {stream.stream_id:#x}"
                )
            ]
        stream.move(Phase.OPEN)
        out: list[ev.Event] = [
            ev.StreamResumed(qid, stream.stream_id, echo.my_position, echo.peer_ack_position)
        ]
        if rest:
            out.append(ev.DataReceived(qid, rest))
        if fin:
            out.append(ev.StreamEnded(qid))
        return out

    # -- provider streams -------------------------------------------------

    def _receive_provider(
        self, qid: int, stream: _Data, data: bytes, end_stream: bool
    ) -> list[ev.Event]:
        stream.held += data
        if len(stream.held) < HEADER_SIZE:
            return self._provider_cut(qid, stream, end_stream)
        word0, length = _header(stream.held)
        if word0 >> 13 != VERSION or (word0 & 0x7FF) != FrameType.INCOMING_STREAM:
            self._close(qid, stream)
            return [ev.StreamAborted(qid, f"expected INCOMING_STREAM, got word {word0:#06x}")]
        if length > MAX_REJECT_PAYLOAD:
            self._close(qid, stream)
            return [ev.StreamAborted(qid, f"INCOMING_STREAM payload of {length} bytes")]
        end = HEADER_SIZE + length
        if len(stream.held) < end:
            return self._provider_cut(qid, stream, end_stream)
        msg = pb.IncomingStream()
        try:
            msg.ParseFromString(bytes(stream.held[HEADER_SIZE:end]))
        except Exception as exc:  # protobuf's DecodeError
            self._close(qid, stream)
            return [ev.StreamAborted(qid, f"undecodable INCOMING_STREAM: {exc}")]
        rest = bytes(stream.held[end:])
        stream.held.clear()
        stream.stream_id = msg.stream_id
        stream.move(Phase.DECIDING)
        out: list[ev.Event] = [
            ev.IncomingStreamReceived(
                qid, msg.target_service, msg.method, msg.source_agent_uri, msg.stream_id
            )
        ]
        if rest:
            out.append(ev.DataReceived(qid, rest))
        if end_stream:
            out.append(ev.StreamEnded(qid))
        return out

    def _provider_cut(self, qid: int, stream: _Data, end_stream: bool) -> list[ev.Event]:
        if not end_stream:
            return []
        self._close(qid, stream)
        return [ev.StreamAborted(qid, "stream ended inside its first frame")]


def _header(held: bytearray) -> tuple[int, int]:
    """``(word0, payload length)`` of the frame header at the start of ``held``."""
    return int.from_bytes(held[:2], "big"), int.from_bytes(held[4:8], "big")


def _classify(held: bytearray) -> str | tuple[int, str]:
    """Is a consumer's held prefix a STREAM_REJECT?

    Returns ``"data"`` (it cannot be one), ``"maybe"`` (a prefix of one) or
    ``(code, reason)`` (a whole, valid one).
    """
    n = len(held)
    if n == 0:
        return "maybe"
    if held[0] != _REJECT_WORD0 >> 8:
        return "data"
    if n == 1:
        return "maybe"
    if held[1] != _REJECT_WORD0 & 0xFF:
        return "data"
    if n < HEADER_SIZE:
        return "maybe"
    _, length = _header(held)
    if length > MAX_REJECT_PAYLOAD:
        return "data"
    if n < HEADER_SIZE + length:
        return "maybe"
    msg = pb.StreamReject()
    try:
        msg.ParseFromString(bytes(held[HEADER_SIZE : HEADER_SIZE + length]))
    except Exception:  # protobuf's DecodeError: not a reject after all
        return "data"
    return msg.code, msg.reason
