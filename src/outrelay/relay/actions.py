"""What the relay core asks its shell to do: frozen dataclasses, applied in order.

The core (``core.py``) never touches a socket; every input returns a list of
these. The asyncio shell (``server.py``) applies them one by one, in order, so
frames queued for one stream stay whole and ordered. Connections and streams
are named by the shell's connection number and the QUIC stream id.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message


class Action:
    """Base class of core actions."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Send(Action):
    """Queue bytes (whole frames) on a stream, optionally with FIN."""

    #: Connection number.
    conn: int
    #: QUIC stream id.
    stream: int
    #: Bytes to send (may be empty with ``fin``).
    data: bytes
    #: Finish our sending side after ``data``.
    fin: bool = False


@dataclass(frozen=True, slots=True)
class Grant(Action):
    """Give the peer back ``n`` bytes of receive credit on a stream."""

    #: Connection number.
    conn: int
    #: QUIC stream id.
    stream: int
    #: Bytes consumed.
    n: int


@dataclass(frozen=True, slots=True)
class StopReading(Action):
    """We will read no more of this stream (STOP_SENDING; credit returned)."""

    #: Connection number.
    conn: int
    #: QUIC stream id.
    stream: int
    #: Application error code for STOP_SENDING.
    code: int = 0


@dataclass(frozen=True, slots=True)
class ResetStream(Action):
    """Abort both directions of a stream (RESET_STREAM and STOP_SENDING)."""

    #: Connection number.
    conn: int
    #: QUIC stream id.
    stream: int


@dataclass(frozen=True, slots=True)
class CloseConnection(Action):
    """Close a connection (QUIC CONNECTION_CLOSE with an application code)."""

    #: Connection number.
    conn: int
    #: Application error code (0 like the reference).
    code: int
    #: Reason phrase (for logs and the peer).
    reason: str


@dataclass(frozen=True, slots=True)
class CallController(Action):
    """Run a controller RPC and report back with ``token`` (None: result unused)."""

    #: Correlates the reply (``controller_replied`` / ``controller_failed``).
    token: int | None
    #: RPC name: ``RegisterService``, ``Resolve`` or ``DeregisterAgent``.
    method: str
    #: The request message.
    request: Message


@dataclass(frozen=True, slots=True)
class OpenStream(Action):
    """Open a relay-initiated stream on ``conn``, send ``data``, report its id.

    The shell answers with ``stream_opened(token, stream_id)`` or
    ``stream_open_failed(token)``.
    """

    #: Correlates the answer.
    token: int
    #: Connection number of the provider.
    conn: int
    #: First bytes to send: the INCOMING_STREAM frame, then any early data the
    #: consumer already sent (one send, so they share a packet).
    data: bytes
    #: Finish our sending side after ``data`` (the consumer's FIN, as early data).
    fin: bool = False


@dataclass(frozen=True, slots=True)
class Leg:
    """One stream of a splice and what the core already read from it."""

    #: Connection number.
    conn: int
    #: QUIC stream id.
    stream: int
    #: Application bytes received after the opening frame, not yet forwarded
    #: (not yet granted).
    pending: bytes = b""
    #: The peer already finished its sending side.
    fin: bool = False
    #: Bytes of this leg the core already forwarded to the other leg (early
    #: data) and not yet granted back: the splice grants them as the other
    #: leg's peer acknowledges them.
    sent: int = 0
    #: The core already forwarded this leg's FIN to the other leg.
    fin_sent: bool = False
    #: Bytes the core wrote on this leg itself (INCOMING_STREAM, a resume echo) that its peer
    #: has not acknowledged yet: their acknowledgement is no credit for the
    #: other leg.
    unacked: int = 0


@dataclass(frozen=True, slots=True)
class StartSplice(Action):
    """Copy bytes both ways between two streams until both directions end.

    From now on the shell feeds those streams' data to the splice, not the
    core, and calls ``splice_ended(flow)`` when it is over.
    """

    #: The core's flow number (for ``splice_ended``).
    flow: int
    #: The consumer's stream.
    a: Leg
    #: The provider's stream.
    b: Leg


def acked_credit(n: int, skip: int, held: int) -> tuple[int, int]:
    """Credit for ``n`` newly acknowledged bytes on a destination stream.

    The first ``skip`` of them are bytes someone else wrote there (a frame
    of the core's), which earn the source nothing; the rest are granted up to
    the ``held`` bytes forwarded from it. Returns (grant, skip left).
    """
    used = min(n, skip)
    return min(n - used, held), skip - used
