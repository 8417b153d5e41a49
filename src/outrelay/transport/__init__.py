"""The QUIC layer under the relay and the agent (wire.md §7.2-7.3).

ALPN ``orp/1``, TLS 1.3, mutual certificates verified against ``--ca`` with
cryptography's X.509 verifier, keepalive and idle timeout, and receive credit
that follows what the application consumed. See ``docs/transport.md``.

* :class:`OrpConnection` is the sans-IO core (datagrams and time in, events
  and datagrams out);
* :func:`serve` / :func:`connect` wrap it in asyncio and hand out :class:`Link`.
"""

from outrelay.transport._aioquic_internals import TESTED_AIOQUIC, check_internals
from outrelay.transport.config import ALPN, MiB, TransportConfig
from outrelay.transport.connection import CRYPTO_ERROR_BASE, OrpConnection
from outrelay.transport.endpoint import Link, Server, connect, serve
from outrelay.transport.errors import (
    CertificateRequired,
    ConnectionClosedError,
    HandshakeError,
    PeerVerificationError,
    StreamClosedError,
    TransportError,
)
from outrelay.transport.events import (
    ConnectionClosed,
    Event,
    HandshakeVerified,
    SendCapacityAvailable,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from outrelay.transport.verify import (
    VerifiedPeer,
    check_role,
    load_ca_bundle,
    verify_client,
    verify_server,
)

__all__ = [
    "ALPN",
    "CRYPTO_ERROR_BASE",
    "TESTED_AIOQUIC",
    "CertificateRequired",
    "ConnectionClosed",
    "ConnectionClosedError",
    "Event",
    "HandshakeError",
    "HandshakeVerified",
    "Link",
    "MiB",
    "OrpConnection",
    "PeerVerificationError",
    "SendCapacityAvailable",
    "Server",
    "StopSendingReceived",
    "StreamClosedError",
    "StreamDataReceived",
    "StreamReset",
    "TransportConfig",
    "TransportError",
    "VerifiedPeer",
    "check_role",
    "check_internals",
    "connect",
    "load_ca_bundle",
    "serve",
    "verify_client",
    "verify_server",
]
