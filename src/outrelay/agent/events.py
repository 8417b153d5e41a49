"""What :class:`outrelay.agent.core.AgentProtocol` reports: frozen, past-tense events.

``qid`` is always the QUIC stream id the event concerns; ``stream_id`` the
ORP stream id (the 64-bit id of OPEN_STREAM / INCOMING_STREAM).
"""

from __future__ import annotations

from dataclasses import dataclass


class Event:
    """Base class of agent protocol events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HelloAcknowledged(Event):
    """The relay answered HELLO with HELLO_ACK: the session is up."""

    #: HelloAck.session_id (the reference relay leaves it empty).
    session_id: str


@dataclass(frozen=True, slots=True)
class HelloTimedOut(Event):
    """No HELLO_ACK arrived within the hello timeout."""


@dataclass(frozen=True, slots=True)
class ServiceRegistered(Event):
    """A REGISTER was acknowledged."""

    #: The service name we registered.
    name: str
    #: RegisterAck.service_id (``<tenant>/<name>`` from the controller).
    service_id: str


@dataclass(frozen=True, slots=True)
class RegisterTimedOut(Event):
    """A REGISTER got no REGISTER_ACK within the register timeout."""

    #: The service name we tried to register.
    name: str


@dataclass(frozen=True, slots=True)
class RegisterRejected(Event):
    """The relay answered a REGISTER with STREAM_REJECT on the control stream.

    OutRelay relays do this for a bad service name (400), a registration no
    bind rule allows (403) or one the controller refused; a reference relay
    sends nothing (then only ``RegisterTimedOut`` comes).
    """

    #: The service name we tried to register (the oldest pending REGISTER).
    name: str
    #: The reject code.
    code: int
    #: The relay's reason.
    reason: str


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    """The relay answered a PING."""


@dataclass(frozen=True, slots=True)
class ObservedAddressReceived(Event):
    """OBSERVED_ADDR_RESP: our address as the relay sees it."""

    #: Echo of ObservedAddrQuery.request_id.
    request_id: int
    #: The IP the relay saw.
    ip: str
    #: The UDP port the relay saw.
    port: int


@dataclass(frozen=True, slots=True)
class CheckpointReceived(Event):
    """STREAM_CHECKPOINT from the peer agent: its positions on a stream."""

    #: ORP stream id.
    stream_id: int
    #: Bytes the peer has sent on the stream.
    my_position: int
    #: Bytes of ours the peer has delivered to its application.
    peer_ack_position: int


@dataclass(frozen=True, slots=True)
class ControlFrameIgnored(Event):
    """A control frame we do not act on (unknown type, stray REGISTER_ACK, bad payload)."""

    #: Its frame type.
    frame_type: int
    #: Why it was ignored.
    reason: str


@dataclass(frozen=True, slots=True)
class StreamOpened(Event):
    """A consumer stream is established: bytes may flow both ways.

    ``cause`` is ``"ready"`` (STREAM_READY arrived), ``"data"`` (bytes arrived
    that cannot be a STREAM_REJECT, so the relay spliced) or ``"timeout"`` (no
    signal within the ready timeout: an inter-relay path sends none).
    """

    #: QUIC stream id.
    qid: int
    #: ORP stream id.
    stream_id: int
    #: What established it.
    cause: str


@dataclass(frozen=True, slots=True)
class StreamRejected(Event):
    """The relay rejected a consumer stream (STREAM_REJECT as its first frame)."""

    #: QUIC stream id.
    qid: int
    #: ORP stream id.
    stream_id: int
    #: StreamReject.code.
    code: int
    #: StreamReject.reason.
    reason: str


@dataclass(frozen=True, slots=True)
class IncomingStreamReceived(Event):
    """The relay opened a stream to us (provider) with INCOMING_STREAM."""

    #: QUIC stream id.
    qid: int
    #: Requested service.
    service: str
    #: Method label from the consumer's OPEN_STREAM.
    method: str
    #: The consumer's identity URI.
    source_uri: str
    #: ORP stream id (0 on inter-relay forwarded streams).
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReadySignalled(Event):
    """STREAM_READY for a stream that needs no action (provider side, or late)."""

    #: ORP stream id.
    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """Application bytes arrived on an established stream."""

    #: QUIC stream id.
    qid: int
    #: The bytes (never empty).
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer finished its sending side (FIN) of an established stream."""

    #: QUIC stream id.
    qid: int


@dataclass(frozen=True, slots=True)
class StreamAborted(Event):
    """A data stream failed: reset, closed before it was established, or bad first frame."""

    #: QUIC stream id.
    qid: int
    #: Human-readable cause.
    reason: str
    #: The relay's RESET_STREAM code (``None``: not a reset).
    error_code: int | None = None


@dataclass(frozen=True, slots=True)
class StreamResumed(Event):
    """The relay echoed our STREAM_RESUME with the partner's positions: splice again."""

    #: QUIC stream id of the resume stream.
    qid: int
    #: ORP stream id.
    stream_id: int
    #: Bytes the partner has written into the stream (its SentPos).
    my_position: int
    #: Bytes of ours the partner has delivered (its RecvPos): re-send from here.
    peer_ack_position: int


@dataclass(frozen=True, slots=True)
class ResumeRejected(Event):
    """The relay refused a STREAM_RESUME (504 no peer in time, 409 superseded, 403)."""

    #: QUIC stream id of the resume stream.
    qid: int
    #: ORP stream id.
    stream_id: int
    #: StreamReject.code.
    code: int
    #: StreamReject.reason.
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolViolated(Event):
    """The control stream broke the protocol (bad frame, closed): drop the session."""

    #: Human-readable cause.
    reason: str
