"""Settings of ``outrelay controller`` as a dataclass (the CLI fills it in)."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Default database file, relative to the working directory.
DEFAULT_PATH = "outrelay-controller.db"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``1h30m``, ``30d``, ``500ms`` or a bare number of seconds.

    Raises ValueError for anything else (negative values included).
    """
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r} (e.g. 90s, 1h30m, 30d)")
    return total


def check_hostport(flag: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (port 0..65535) -> (host, port).

    Raises ValueError naming ``flag``.
    """
    host, sep, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535 or " " in host:
        raise ValueError(f"{flag}: want HOST:PORT, got {value!r}")
    return host, int(port)


@dataclass(frozen=True)
class ControllerConfig:
    """Everything ``run`` needs; defaults match the CLI's."""

    #: gRPC listen address (mTLS unless ``insecure``)
    listen: str = "127.0.0.1:7444"
    #: SQLite database file
    db: str = DEFAULT_PATH
    #: controller certificate, key and the CA that signs client certificates (PEM files)
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    #: CA private key: enables the Enrollment service (signing agent leaves)
    ca_key: str | None = None
    #: TLS-only (no client certificate) port for Enrollment.Enroll; '' disables
    enroll_listen: str = "127.0.0.1:7446"
    #: serve plaintext without authentication (local experiments only)
    insecure: bool = False
    #: debug HTTP address; '' disables
    debug_listen: str = "127.0.0.1:9101"
    log_format: str = "text"
    log_level: str = "info"
    #: JSONL metrics file ('' disables) and its interval in seconds
    metrics_dump: str = ""
    metrics_interval: float = 10.0
    #: delete audit events older than this many seconds (0 keeps them forever)
    audit_retention: float = 30 * 86400.0
    #: expected relay heartbeat interval; relays silent for 3 of them are stale
    relay_heartbeat: float = 10.0
    #: capacity of one Watch stream's queue
    watch_queue: int = 64
    #: seconds in-flight RPCs get to finish at shutdown
    shutdown_grace: float = 5.0
    #: write ``{"grpc": …, "debug": …, "enroll": …}`` here once serving
    ready_file: str = ""

    def check(self) -> None:
        """Validate the values that need no file or network (addresses, durations).

        Raises ValueError naming the flag.
        """
        check_hostport("--listen", self.listen)
        if self.enroll_listen:
            check_hostport("--enroll-listen", self.enroll_listen)
        if self.debug_listen:
            check_hostport("--debug-listen", self.debug_listen)
        if not self.db:
            raise ValueError("--db is required")
        for flag, value in (
            ("--metrics-interval", self.metrics_interval),
            ("--relay-heartbeat", self.relay_heartbeat),
            ("--watch-queue", self.watch_queue),
        ):
            if value <= 0:
                raise ValueError(f"{flag} must be positive")
        if self.audit_retention < 0 or self.shutdown_grace < 0:
            raise ValueError("--audit-retention and --shutdown-grace must not be negative")
