"""Configuration of an agent: the SDK's :class:`AgentConfig` and the CLI's :class:`RunConfig`."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from outrelay.agent.core import HELLO_TIMEOUT, READY_TIMEOUT, REGISTER_TIMEOUT
from outrelay.agent.stream import DEFAULT_HIGH_WATER
from outrelay.identity import IdentityError, Role, parse
from outrelay.policy.names import check_service_name
from outrelay.resume import DEFAULT_MIN_RING_CAPACITY, DEFAULT_RING_CAPACITY, RESUME_WINDOW_S

PathLike = str | os.PathLike[str]

#: The only role an agent accepts from the server it dials: its URI SAN must be
#: ``outrelay://<region>/relay/<id>`` (an agent's or admin's leaf is refused).
RELAY_ROLES = frozenset({Role.RELAY})


def parse_hostport(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too).

    Raises:
        ValueError: no port, a port outside 0..65535, or an empty host.
    """
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    if not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def format_hostport(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets (the inverse of :func:`parse_hostport`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: A backend or listener host: an IP literal or a DNS name (no scheme, no path).
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _valid_host(host: str) -> bool:
    if ":" not in host:
        return _HOST.fullmatch(host) is not None
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def parse_mapping(value: str) -> tuple[str, str, int]:
    """Split ``NAME=HOST:PORT`` into ``(name, host, port)``.

    NAME must follow the service-name rule (``outrelay.policy.names``); HOST
    is an IP address (IPv6 in brackets) or a DNS name, never a URL.

    Raises:
        ValueError: no ``=``, a bad name (the message states the rule), or a
            bad ``HOST:PORT``.
    """
    name, sep, addr = value.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"expected NAME=HOST:PORT, got {value!r}")
    check_service_name(name)
    host, port = parse_hostport(addr)
    if not _valid_host(host):
        raise ValueError(
            f"expected NAME=HOST:PORT with HOST an IP address or a DNS name "
            f"(no scheme or path), got {value!r}"
        )
    return name, host, port


@dataclass(frozen=True)
class AgentConfig:
    """What an :class:`outrelay.Agent` needs: relays, credentials, limits."""

    #: Relay QUIC endpoints ``host:port``, tried in order; the first that answers wins.
    relays: tuple[str, ...]
    #: PEM client certificate (its first URI SAN is the agent's identity).
    cert: PathLike
    #: PEM private key of ``cert``.
    key: PathLike
    #: PEM CA bundle the relay's certificate must chain to.
    ca: PathLike
    #: Agent URI sent in HELLO; ``None``: the certificate's first URI SAN.
    uri: str | None = None
    #: TLS server name checked in the relay's certificate (an extra check: the
    #: relay's identity is its URI SAN, which must have the relay role).
    server_name: str = "localhost"
    #: Pin: the relay's certificate URI must be exactly this relay identity
    #: (``outrelay://<region>/relay/<id>``); ``None``: any relay of the CA.
    relay_uri: str | None = None
    #: Per-stream window: QUIC receive window and send high-water mark (bytes;
    #: yamux streams on TCP keep the protocol's 256 KiB receive window).
    window: int = DEFAULT_HIGH_WATER
    #: Seconds for one relay's handshake (QUIC, or TCP connect + TLS).
    connect_timeout: float = 5.0
    #: Seconds to wait for HELLO_ACK.
    hello_timeout: float = HELLO_TIMEOUT
    #: Seconds to wait for each REGISTER_ACK.
    register_timeout: float = REGISTER_TIMEOUT
    #: Seconds ``open_connection`` waits for STREAM_READY before bridging anyway.
    ready_timeout: float = READY_TIMEOUT
    #: Seconds a provider waits for its local backend to accept a TCP connection.
    dial_timeout: float = 10.0
    #: Longest pause between reconnect attempts (seconds).
    max_backoff: float = 30.0
    #: :meth:`Agent.start` raises ConnectFailed when the first attempt finds no
    #: relay (the reference's behaviour) instead of retrying with the backoff.
    #: Only the start is concerned: a lost session is always retried.
    exit_on_failure: bool = False
    #: QUIC idle timeout and keepalive (seconds).
    idle_timeout: float = 10.0
    keepalive: float = 3.0
    #: Seconds a stream whose relay leg was lost may take to resume (0: no resume).
    #: Use the relays' ``--resume-window``.
    resume_window: float = float(RESUME_WINDOW_S)
    #: Smallest and largest ring of unacknowledged bytes per stream.
    ring_min: int = DEFAULT_MIN_RING_CAPACITY
    ring_max: int = DEFAULT_RING_CAPACITY
    #: Concurrent incoming streams one caller identity may have here; more are
    #: refused with STREAM_REJECT 503 (the relay applies its own limit first).
    max_streams_per_caller: int = 256
    #: Relay TCP+TLS+yamux endpoints (``--listen-tcp``), paired by position with
    #: ``relays`` (the Nth is the Nth relay's TCP listener).
    relays_tcp: tuple[str, ...] = ()
    #: ``auto``: happy eyeballs (QUIC first, TCP after 250 ms or at once when
    #: QUIC fails); ``quic`` or ``tcp``: that transport only.
    transport: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.relays, str):
            object.__setattr__(self, "relays", tuple(split_relays([self.relays])))
        if isinstance(self.relays_tcp, str):
            object.__setattr__(self, "relays_tcp", tuple(split_relays([self.relays_tcp])))
        if self.transport not in ("auto", "quic", "tcp"):
            raise ValueError(f"agent: transport: want auto, quic or tcp, got {self.transport!r}")
        usable = {
            "auto": self.relays or self.relays_tcp,
            "quic": self.relays,
            "tcp": self.relays_tcp,
        }[self.transport]
        if not usable:
            need = {"quic": "QUIC relay", "tcp": "TCP relay (relays_tcp)"}.get(
                self.transport, "relay"
            )
            raise ValueError(f"agent: at least one {need} address is needed")
        for relay in (*self.relays, *self.relays_tcp):
            parse_hostport(relay)
        if self.window <= 0:
            raise ValueError("agent: window must be positive")
        if self.resume_window < 0:
            raise ValueError("agent: resume_window must not be negative")
        if self.max_streams_per_caller <= 0:
            raise ValueError("agent: max_streams_per_caller must be positive")
        if not 0 < self.ring_min <= self.ring_max:
            raise ValueError("agent: need 0 < ring_min <= ring_max")
        if self.relay_uri is not None:
            check_relay_uri(self.relay_uri)


def check_relay_uri(value: str) -> str:
    """``value`` if it is a canonical relay identity URI (the ``--relay-uri`` pin).

    Raises:
        ValueError: not an identity, not the relay role, or not canonical
            (the pin is compared exactly with the certificate's URI).
    """
    try:
        identity = parse(value)
    except IdentityError as exc:
        raise ValueError(f"relay URI {value!r} is not an identity: {exc}") from None
    if identity.role is not Role.RELAY:
        raise ValueError(
            f"relay URI {value!r} has the {identity.role} role; "
            "want a relay identity outrelay://<region>/relay/<id>"
        )
    if str(identity) != value:
        raise ValueError(f"relay URI {value!r} is not canonical; write {str(identity)!r}")
    return value


def split_relays(values: list[str] | tuple[str, ...]) -> list[str]:
    """Flatten repeated, comma-separated ``--relay`` values; blanks are dropped."""
    out: list[str] = []
    for value in values:
        out += [part.strip() for part in value.split(",") if part.strip()]
    return out


@dataclass(frozen=True)
class Mapping:
    """One ``NAME=HOST:PORT`` of ``--expose`` or ``--consume``."""

    name: str
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Mapping:
        """Raises ValueError like :func:`parse_mapping`."""
        return cls(*parse_mapping(value))

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 hosts bracketed)."""
        return format_hostport(self.host, self.port)


@dataclass(frozen=True)
class RunConfig:
    """The ``outrelay agent`` command: an agent plus its exposed and consumed services."""

    agent: AgentConfig
    #: Services to REGISTER, each dialled on its local backend per incoming stream.
    expose: tuple[Mapping, ...] = ()
    #: Local TCP listeners, each connection opened as a stream to the named service.
    consume: tuple[Mapping, ...] = ()
    #: ``host:port`` of the debug HTTP server ("" = off).
    debug_listen: str = ""
    #: JSONL file for periodic metric snapshots ("" = off).
    metrics_dump: str = ""
    #: Seconds between metric snapshots.
    metrics_interval: float = 10.0
    #: Write JSON describing the bound listeners here once the session is up.
    ready_file: str = ""
    log_format: str = "text"
    log_level: str = "info"
    extra: dict[str, str] = field(default_factory=dict)
