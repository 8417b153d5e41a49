"""Which transport reaches a relay: happy eyeballs between QUIC and TCP.

A relay is a :class:`Candidate`: its QUIC address (``--relay``) and/or its
TCP address (``--relay-tcp``), paired by position (the Nth ``--relay-tcp``
is the Nth relay's TCP listener; a longer list's extra entries are relays
of one transport only). ``--transport`` narrows a candidate to one
transport.

With both, :func:`race` dials QUIC first and gives it a head start of
:data:`HEAD_START` (250 ms); TCP starts when the head start is over, or at
once when the QUIC dial fails first (nobody listens, ICMP port unreachable,
refused certificate). The first link that completes its handshake and
verification wins; the other dial is cancelled (or its link closed if it
also finished). Only the winner carries HELLO and the REGISTERs, so the
relay never sees a session that is dropped right away.

The reference falls back to TCP only at start-up and only after its QUIC
handshake timed out (5 s), and then stays on TCP; here every (re)connect
races both, so a UDP-blocked network costs 250 ms, not 5 s, and a session
returns to QUIC when QUIC works again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from outrelay.agent.errors import ConnectFailed
from outrelay.errors import OutRelayError
from outrelay.observe import kv
from outrelay.transport.link import StreamLink

log = logging.getLogger("outrelay.agent")

#: Seconds QUIC may try alone before TCP is dialled too.
HEAD_START = 0.25
#: ``--transport`` values.
TRANSPORTS = ("auto", "quic", "tcp")

#: ``dial(transport, "host:port")`` -> a verified link.
Dialer = Callable[[str, str], Awaitable[StreamLink]]


@dataclass(frozen=True)
class Candidate:
    """One relay: its QUIC and/or TCP address."""

    quic: str | None
    tcp: str | None

    def __str__(self) -> str:
        if self.quic and self.tcp:
            return f"{self.quic} (tcp {self.tcp})"
        return self.quic or f"tcp {self.tcp}"


def candidates(
    relays: Sequence[str], relays_tcp: Sequence[str], transport: str = "auto"
) -> list[Candidate]:
    """The relays to try, in order, each with the addresses ``transport`` allows.

    Raises:
        ValueError: an unknown ``transport``, or no address for it.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport: want auto, quic or tcp, got {transport!r}")
    quic = list(relays) if transport in ("auto", "quic") else []
    tcp = list(relays_tcp) if transport in ("auto", "tcp") else []
    out = [
        Candidate(quic[i] if i < len(quic) else None, tcp[i] if i < len(tcp) else None)
        for i in range(max(len(quic), len(tcp)))
    ]
    if not out:
        need = {"quic": "--relay", "tcp": "--relay-tcp"}.get(transport, "--relay or --relay-tcp")
        raise ValueError(f"--transport {transport} needs at least one {need} address")
    return out


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def race(
    candidate: Candidate, dial: Dialer, *, head_start: float = HEAD_START
) -> tuple[str, str, StreamLink]:
    """Dial ``candidate`` (happy eyeballs); return (transport, address, link) of the winner.

    Raises:
        ConnectFailed: every dial failed (the message gives each reason).
    """
    attempts: dict[asyncio.Task[StreamLink], tuple[str, str]] = {}

    def start(transport: str, address: str) -> None:
        task = asyncio.ensure_future(dial(transport, address))
        attempts[task] = (transport, address)

    if candidate.quic:
        start("quic", candidate.quic)
    else:
        assert candidate.tcp
        start("tcp", candidate.tcp)
    pending = set(attempts)
    errors: list[str] = []
    tcp_started = candidate.quic is None or candidate.tcp is None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + head_start
    won: asyncio.Task[StreamLink] | None = None
    try:
        while pending:
            timeout = None if tcp_started else max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                exc = task.exception()
                if exc is None:
                    won = won or task
                    continue
                if not isinstance(exc, OutRelayError | OSError | TimeoutError):
                    raise exc
                transport, address = attempts[task]
                errors.append(f"{transport} {address}: {_reason(exc)}")
                log.info(
                    "relay did not answer",
                    extra=kv(relay=address, transport=transport, err=_reason(exc)),
                )
            if won is not None:
                transport, address = attempts[won]
                if candidate.quic and candidate.tcp:
                    raced = "raced" if len(attempts) > 1 else "within the QUIC head start"
                    log.info(
                        f"agent: {transport} transport chosen ({raced})",
                        extra=kv(relay=address, transport=transport),
                    )
                return transport, address, won.result()
            if not tcp_started:
                # The head start is over, or QUIC failed first: dial TCP now.
                tcp_started = True
                assert candidate.tcp
                start("tcp", candidate.tcp)
                pending = {t for t in attempts if not t.done()}
    finally:
        for task in attempts:
            if not task.done():
                task.cancel()
        for task in attempts:
            if task is won:
                continue
            try:
                loser = await task
            except BaseException:
                continue
            loser.close(0, "another transport won")  # finished at the same time
    raise ConnectFailed("agent: " + "; ".join(errors))
