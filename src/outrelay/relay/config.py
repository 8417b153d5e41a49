"""Everything a relay process needs to run; the CLI fills it, ``run`` reads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from outrelay.identity import IdentityError, Role, peer_identity
from outrelay.observe.http import parse_hostport

MiB = 1024 * 1024


class ConfigError(ValueError):
    """A relay setting is missing or invalid."""


#: The one-line refusal of a relay started with neither --tenant nor --no-policy.
NO_TENANT = (
    "no --tenant given: pass --tenant TENANT[,TENANT...] to enforce those tenants' "
    "policies, or --no-policy to run without policy and audit"
)


def split_hostport(value: str, what: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port).

    Raises:
        ConfigError: not of that form.
    """
    try:
        return parse_hostport(value, default_host="0.0.0.0")
    except ValueError:
        raise ConfigError(f"--{what}: want HOST:PORT, got {value!r}") from None


@dataclass(frozen=True)
class RelayConfig:
    """Relay settings; defaults match the CLI (and relay.md §1.1 where it applies)."""

    #: UDP address of the QUIC listener (port 0: ephemeral).
    listen: str = "127.0.0.1:7443"
    #: TCP address of the TCP+TLS+yamux listener ('' = disabled, the default).
    listen_tcp: str = ""
    #: PEM certificate (chain), its key, and the CA bundle client certs must chain to.
    cert: str = ""
    key: str = ""
    ca: str = ""
    #: Controller gRPC address.
    controller: str = "127.0.0.1:7444"
    #: CA bundle for the controller's server certificate ('' = ``ca``).
    controller_ca: str = ""
    #: Name expected in the controller's certificate ('' = the host of ``controller``).
    controller_server_name: str = ""
    #: Plaintext gRPC to the controller (its ``--insecure`` mode; local use only).
    insecure_controller: bool = False
    #: Identifier in UpsertRelay and every RegisterService ('' = the id in the
    #: certificate's relay URI SAN; anything else must equal it).
    relay_id: str = ""
    #: Sent in UpsertRelay and as Resolve's caller_region.
    region: str = "local"
    #: Endpoint peers would dial, sent in UpsertRelay ('' = the bound listen address).
    advertise: str = ""
    #: Comma-separated tenants whose policies are enforced (one of this and
    #: ``no_policy`` is required).
    tenant: str = ""
    #: Run without policy and audit (every verified agent may open any service).
    #: Must be asked for: a relay without ``tenant`` refuses to start otherwise.
    no_policy: bool = False
    #: Debug HTTP address ('' disables).
    debug_listen: str = "127.0.0.1:9100"
    #: JSONL file for periodic metric snapshots ('' disables).
    metrics_dump: str = ""
    #: Seconds between metric snapshots.
    metrics_interval: float = 10.0
    log_format: str = "text"
    log_level: str = "info"
    #: Bytes the relay holds per spliced stream direction (the QUIC stream window).
    window: int = MiB
    #: Bytes the relay holds per connection (the QUIC connection window).
    connection_window: int = 16 * MiB
    #: Seconds between UpsertRelay heartbeats.
    heartbeat: float = 10.0
    #: Audit queue depth (a full queue drops and counts).
    audit_queue: int = 1024
    #: Write {"quic": ..., "tcp": ..., "debug": ...} here once listening ('' = no file).
    ready_file: str = ""
    #: QUIC idle timeout and keepalive, seconds (wire.md §7.2).
    idle_timeout: float = 10.0
    keepalive: float = 3.0
    #: Seconds a STREAM_RESUME half waits for its partner (relay.md §8).
    resume_window: float = 30.0
    #: Seconds a Resolve answer may stand in for an unreachable controller.
    resolve_cache_ttl: float = 30.0
    #: Concurrent streams one caller identity may have to one provider
    #: identity, over all its connections; more are refused at once with
    #: 503 ``caller stream limit reached``.
    max_streams_per_caller: int = 256
    #: QUIC address validation (Retry): ``auto`` once ``retry_threshold``
    #: handshakes are in progress, ``always`` or ``never`` (docs/transport.md).
    retry: str = "auto"
    #: Handshakes in progress from which ``retry=auto`` answers Initials with Retry.
    retry_threshold: int = 64
    #: Most handshakes in progress; Initials beyond are dropped without state.
    max_half_open: int = 512

    @property
    def tenants(self) -> list[str]:
        """The tenants of ``tenant``, in order, without blanks or repeats."""
        return list(dict.fromkeys(t.strip() for t in self.tenant.split(",") if t.strip()))

    def check(self) -> None:
        """Validate what can be validated without touching files or the network.

        Raises:
            ConfigError: a required setting is missing or a value is invalid.
        """
        missing = [f"--{n}" for n in ("cert", "key", "ca") if not getattr(self, n)]
        if missing:
            raise ConfigError(f"{', '.join(missing)} required")
        if not self.tenants and not self.no_policy:
            raise ConfigError(NO_TENANT)
        if self.tenants and self.no_policy:
            raise ConfigError("--tenant and --no-policy exclude each other")
        split_hostport(self.listen, "listen")
        if self.listen_tcp:
            split_hostport(self.listen_tcp, "listen-tcp")
        split_hostport(self.controller, "controller")
        if self.debug_listen:
            split_hostport(self.debug_listen, "debug-listen")
        if self.window <= 0 or self.connection_window <= 0:
            raise ConfigError("--window and --connection-window must be positive")
        if self.connection_window < self.window:
            raise ConfigError("--connection-window must be at least --window")
        if self.heartbeat <= 0:
            raise ConfigError("--heartbeat must be positive")
        if self.resume_window <= 0:
            raise ConfigError("--resume-window must be positive")
        if self.max_streams_per_caller <= 0:
            raise ConfigError("--max-streams-per-caller must be positive")
        if self.resolve_cache_ttl < 0:
            raise ConfigError("--resolve-cache-ttl must not be negative")
        if self.retry not in ("auto", "always", "never"):
            raise ConfigError(f"--retry: want auto, always or never, got {self.retry!r}")
        if self.max_half_open < 1:
            raise ConfigError("--max-half-open must be at least 1")
        if not 0 <= self.retry_threshold <= self.max_half_open:
            raise ConfigError("--retry-threshold must be between 0 and --max-half-open")


def certificate_relay_id(config: RelayConfig) -> str:
    """The relay id: the last segment of ``config.cert``'s relay URI SAN.

    An explicit ``config.relay_id`` must equal it (the controller accepts a
    relay only under the id its certificate names).

    Raises:
        ConfigError: the certificate cannot be read, names no relay identity
            (``outrelay://<region>/relay/<id>``), or ``relay_id`` differs from it.
    """
    try:
        data = Path(config.cert).read_bytes()
    except OSError as exc:
        raise ConfigError(f"credentials: cannot read {config.cert}: {exc.strerror}") from None
    try:
        identity = peer_identity(data)
    except IdentityError as exc:
        raise ConfigError(f"credentials: {config.cert}: {exc}") from None
    if identity.role is not Role.RELAY:
        raise ConfigError(
            f"--cert: {config.cert} names {identity}, not a relay "
            "(want outrelay://<region>/relay/<id>)"
        )
    if config.relay_id and config.relay_id != identity.id:
        raise ConfigError(
            f"--relay-id {config.relay_id!r} differs from the certificate's relay id "
            f"{identity.id!r} ({identity}); leave --relay-id out"
        )
    return identity.id
