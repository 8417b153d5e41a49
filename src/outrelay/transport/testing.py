"""Client Initials built by a real aioquic client, for tests and ``bench/initial_flood.py``.

A spoofer does not need a valid handshake, only packets that look like one:
:func:`client_initial` gives the first datagram an aioquic client would send
(a long-header Initial carrying a ClientHello, padded to 1,200 bytes, with a
random 8-byte destination connection id), plus the client connection that
made it, which can decrypt the server's answer. Not used by the relay or
the agent.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicHeader, pull_quic_header

from outrelay.transport.config import ALPN


def client_initial(
    addr: tuple[str, int], *, token: bytes = b"", alpn: str = ALPN
) -> tuple[bytes, QuicConnection]:
    """(first datagram, the client connection) of an aioquic client dialling ``addr``.

    ``token`` goes into the Initial's token field (as after a Retry).
    """
    config = QuicConfiguration(is_client=True, alpn_protocols=[alpn], server_name="localhost")
    config.verify_mode = ssl.CERT_NONE
    config.token = token
    conn = QuicConnection(configuration=config)
    now = time.monotonic()
    conn.connect(addr, now=now)
    datagrams = conn.datagrams_to_send(now=now)
    return datagrams[0][0], conn


def parse_header(datagram: bytes) -> QuicHeader:
    """The QUIC header of a datagram a server sent (8-byte connection ids)."""
    return pull_quic_header(Buffer(data=datagram), host_cid_length=8)


def feed(conn: QuicConnection, datagram: bytes, addr: Any) -> list[Any]:
    """Feed a server datagram to a client connection; the aioquic events it caused.

    A CONNECTION_CLOSE puts the client in its draining period; the
    ``ConnectionTerminated`` event comes when that ends, so the client's
    timer is run to its deadline here (for a live client: one PTO probe).
    """
    conn.receive_datagram(datagram, addr, now=time.monotonic())
    timer = conn.get_timer()
    if timer is not None:
        conn.handle_timer(now=timer)
    events = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events
