"""Transport configuration and its translation to aioquic's ``QuicConfiguration``."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from aioquic.quic.configuration import QuicConfiguration

from outrelay.identity.uri import Role
from outrelay.transport.admission import check_settings

#: ALPN token of ORP v1 (wire.md §7.2).
ALPN = "orp/1"
MiB = 1024 * 1024

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TransportConfig:
    """How one endpoint speaks QUIC: its credentials, the peer's CA and the limits.

    Defaults are wire.md §7.2's (idle timeout 10 s, keepalive 3 s) and the
    relay/agent issue's windows (1 MiB per stream, 16 MiB per connection).
    """

    #: PEM certificate (chain) we present; required for a server, and for a
    #: client talking to a server that requires mTLS.
    cert: PathLike | None
    #: PEM private key of ``cert``.
    key: PathLike | None
    #: PEM bundle of CAs the peer's certificate must chain to.
    ca: PathLike | None
    alpn: str = ALPN
    #: Seconds without any packet after which the connection is dropped.
    idle_timeout: float = 10.0
    #: Send a PING after this many seconds without receiving anything (0: never).
    keepalive: float = 3.0
    #: Receive window per stream: bytes the peer may send beyond what we consumed.
    stream_window: int = MiB
    #: Receive window per connection, over all streams.
    connection_window: int = 16 * MiB
    #: Name the client checks in the server's certificate (wire.md §7.3).
    server_name: str = "localhost"
    #: Verify the peer's certificate (server: require and verify a client cert).
    verify_peer: bool = True
    #: Server only: refuse a client certificate without a URI SAN.
    require_uri: bool = True
    #: Concurrent bidirectional streams the peer may open (QUIC MAX_STREAMS;
    #: aioquic's own value is 128). Above the per-caller stream limits of
    #: relay and agent (256), so one caller's share leaves room for others.
    max_streams: int = 1024
    #: Roles the peer's identity (first URI SAN of its verified leaf) must have,
    #: checked before the application sees the connection; ``None``: no role
    #: check (tests, benchmarks). The agent accepts relays, the relay agents.
    peer_roles: frozenset[Role] | None = None
    #: The exact URI the peer must present (pinning, e.g. ``--relay-uri``).
    peer_uri: str | None = None
    #: Server only: when to answer an Initial with a Retry (address
    #: validation, RFC 9000 §8.1): ``auto`` once ``retry_threshold``
    #: handshakes are in progress, ``always`` or ``never``. See ``admission.py``.
    retry: str = "auto"
    #: Server only: handshakes in progress from which ``auto`` sends Retry.
    retry_threshold: int = 64
    #: Server only: most handshakes in progress; further Initials are dropped
    #: (``auto``/``always``: answered with Retry unless they carry a valid token).
    max_half_open: int = 512
    #: Server only: seconds a Retry token stays valid.
    retry_token_lifetime: float = 10.0
    #: Server only: receive buffer asked for the UDP socket (``SO_RCVBUF``; the
    #: kernel caps it at ``net.core.rmem_max``), so a burst of handshake work
    #: does not make the kernel drop what arrives meanwhile. 0: the default.
    recv_buffer: int = 4 * MiB

    def __post_init__(self) -> None:
        if self.peer_roles is not None and not isinstance(self.peer_roles, frozenset):
            roles: Iterable[Role] = self.peer_roles
            object.__setattr__(self, "peer_roles", frozenset(roles))
        if (self.peer_roles is not None or self.peer_uri is not None) and not self.verify_peer:
            raise ValueError(
                "transport: a role check needs verify_peer (an unverified URI proves nothing)"
            )
        if self.peer_roles is not None and not self.peer_roles:
            raise ValueError("transport: peer_roles must name at least one role")
        if self.stream_window <= 0 or self.connection_window <= 0:
            raise ValueError("transport: windows must be positive")
        if self.idle_timeout <= 0:
            raise ValueError("transport: idle_timeout must be positive")
        if self.keepalive < 0:
            raise ValueError("transport: keepalive must not be negative")
        if self.max_streams <= 0:
            raise ValueError("transport: max_streams must be positive")
        try:
            check_settings(self.retry, self.retry_threshold, self.max_half_open)
        except ValueError as exc:
            raise ValueError(f"transport: {exc}") from None
        if self.recv_buffer < 0:
            raise ValueError("transport: recv_buffer must not be negative")
        if self.retry_token_lifetime <= 0:
            raise ValueError("transport: retry_token_lifetime must be positive")

    def quic_configuration(self, *, is_client: bool) -> QuicConfiguration:
        """The aioquic configuration for one side of a connection."""
        quic = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[self.alpn],
            idle_timeout=self.idle_timeout,
            max_data=self.connection_window,
            max_stream_data=self.stream_window,
            server_name=self.server_name if is_client else None,
        )
        if self.cert is not None:
            quic.load_cert_chain(self.cert, self.key)
        if is_client:
            if self.verify_peer:
                if self.ca is None:
                    raise ValueError("transport: a verifying client needs a CA bundle")
                quic.load_verify_locations(cafile=os.fspath(self.ca))
                quic.verify_mode = ssl.CERT_REQUIRED
            else:
                quic.verify_mode = ssl.CERT_NONE
        elif self.cert is None:
            raise ValueError("transport: a server needs a certificate and key")
        return quic
