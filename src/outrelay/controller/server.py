"""Assemble and run the controller: store, services, gRPC server, debug HTTP.

``run(config)`` is the programmatic twin of ``outrelay controller``: it
serves until SIGINT/SIGTERM, then stops gracefully (Watch streams end with
UNAVAILABLE, in-flight unary RPCs get ``shutdown_grace`` seconds) and closes
the database cleanly (WAL checkpoint). ``serve(config, stop)`` is the same
inside an existing event loop.

Ports: ``listen`` is mTLS (every client presents a certificate of our CA;
roles are checked by ``auth.RoleInterceptor``). When the Enrollment service
is enabled (``ca_key``), ``enroll_listen`` is a second, server-TLS-only port
of the same server, so agents without a certificate can call Enroll. With
``insecure`` there is one plaintext port and no authentication at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from outrelay import __version__
from outrelay import loop as loops
from outrelay.childproc import write_ready_file
from outrelay.controller.audit import AuditService, run_retention
from outrelay.controller.auth import RoleInterceptor
from outrelay.controller.base import Db
from outrelay.controller.config import ControllerConfig
from outrelay.controller.hub import Hub
from outrelay.controller.policy_service import PolicyService
from outrelay.controller.registry import RegistryService
from outrelay.controller.store import Store
from outrelay.errors import InputError, OutRelayError
from outrelay.observe import REGISTRY, DebugServer, kv, parse_hostport, run_dumper
from outrelay.proto import audit_pb2_grpc, policy_pb2_grpc, registry_pb2_grpc
from outrelay.tlsfiles import read_file, read_tls_files

log = logging.getLogger("outrelay.controller")

#: Larger than the default 4 MiB so big policy lists still fit in one reply.
MAX_MESSAGE = 16 * 1024 * 1024


class ConfigError(InputError):
    """A setting cannot work (bad address, unreadable or malformed file): exit code 2."""


class BindError(OutRelayError):
    """A listen address is well formed but cannot be bound (in use, not ours): exit code 1."""


@dataclass(frozen=True)
class _Tls:
    """The controller's key, certificate and CA, read once at start-up (PEM)."""

    key: bytes
    cert: bytes
    ca: bytes

    @classmethod
    def read(cls, config: ControllerConfig) -> _Tls:
        """Read and check the files (parse, key matches certificate); ConfigError if not."""
        missing = [f"--{n}" for n in ("cert", "key", "ca") if not getattr(config, n)]
        if missing:
            raise ConfigError(f"{', '.join(missing)} required (or --insecure for plaintext)")
        try:
            files = read_tls_files(config.cert, config.key, config.ca)
        except InputError as exc:
            raise ConfigError(str(exc)) from None
        return cls(files.key, files.cert, files.ca)

    def credentials(self, *, mtls: bool) -> grpc.ServerCredentials:
        """Server credentials; with ``mtls`` clients must present a certificate of the CA."""
        if mtls:
            return grpc.ssl_server_credentials(
                [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
            )
        return grpc.ssl_server_credentials([(self.key, self.cert)])


def _load_ca(config: ControllerConfig, tls: _Tls | None) -> Any:
    """The CA (certificate and key) that signs enrolled leaves; None without --ca-key."""
    if not config.ca_key:
        return None
    from outrelay.pki.ca import CA

    ca_pem = tls.ca if tls is not None else read_file(config.ca, "--ca")
    key_pem = read_file(config.ca_key, "--ca-key")
    try:
        return CA.from_pem(ca_pem, key_pem)
    except Exception as exc:  # the pki's own errors, named in the message
        raise ConfigError(f"--ca-key {config.ca_key}: cannot load the CA: {exc}") from None


def _check_db_path(path: str) -> None:
    db = Path(path)
    if db.is_dir():
        raise ConfigError(f"--db {path}: is a directory")
    parent = db.parent
    if not parent.is_dir():
        raise ConfigError(f"--db {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--db {path}: directory {parent} is not writable")
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise ConfigError(f"--db {path}: not readable and writable")


@dataclass(frozen=True)
class Checked:
    """What :func:`check` read: the TLS files and the enrollment CA (None if not used)."""

    tls: _Tls | None
    ca: Any


def check(config: ControllerConfig) -> Checked:
    """Validate every setting before anything is opened, created or bound.

    Addresses, durations, the TLS files (read and parsed), the CA key, the
    database's directory and those of the files we write. Raises ConfigError
    naming the flag.
    """
    try:
        config.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    tls = None if config.insecure else _Tls.read(config)
    ca = _load_ca(config, tls)
    _check_db_path(config.db)
    for flag, path in (
        ("--ready-file", config.ready_file),
        ("--metrics-dump", config.metrics_dump),
    ):
        if path and not Path(path).parent.is_dir():
            raise ConfigError(f"{flag} {path}: no such directory {Path(path).parent}")
    return Checked(tls, ca)


def _enrollment(ca: Any, store: Store) -> Any:
    """The Enrollment servicer if a CA was loaded, else None."""
    if ca is None:
        return None
    from outrelay.pki.enrollment import EnrollmentService
    from outrelay.pki.tokens import TokenIssuer, TokenVerifier

    return EnrollmentService(ca, TokenVerifier(store), TokenIssuer(store))


def _bind_failure(address: str) -> str:
    """Why ``address`` cannot be bound, asked of the OS (gRPC's own message says little)."""
    try:
        host, port = parse_hostport(address)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    except ValueError:
        pass
    return "cannot bind"


class Controller:
    """One running controller; ``start`` then ``stop``."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.ready = False
        self.addresses: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._debug: DebugServer | None = None
        self._db: Db | None = None
        self._server: grpc.aio.Server | None = None
        self._hubs: list[Hub[Any]] = []
        self._tls: _Tls | None = None
        self._started = False

    async def start(self) -> None:
        """Check every setting, bind every port, open the store and start serving.

        Nothing is created before the settings are checked, and the database
        is opened only once the ports are bound: a bad flag or a busy port
        leaves no database file behind.

        Raises ConfigError (bad flags or files), BindError or StoreError
        (CorruptStoreError for a file that fails ``quick_check``).
        """
        cfg = self.config
        checked = check(cfg)
        self._tls = checked.tls
        if cfg.insecure:
            log.warning(
                "controller: INSECURE MODE: plaintext gRPC, no authentication, every "
                "caller may call every method; never use this outside local experiments"
            )
        try:
            server = self._bind_all(checked)
            self._db = db = Db(Store(cfg.db))
            await self._start_services(server, db, checked.ca)
        except BaseException:
            await self.stop()
            raise

    def _bind_all(self, checked: Checked) -> grpc.aio.Server:
        cfg = self.config
        options = [
            ("grpc.so_reuseport", 0),  # a second controller on the same port must fail
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        interceptors = [] if cfg.insecure else [RoleInterceptor()]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        self._server = server
        tls = checked.tls
        self.addresses["grpc"] = self._bind(
            server, cfg.listen, None if tls is None else tls.credentials(mtls=True)
        )
        if checked.ca is not None and cfg.enroll_listen and tls is not None:
            self.addresses["enroll"] = self._bind(
                server, cfg.enroll_listen, tls.credentials(mtls=False)
            )
        return server

    async def _start_services(self, server: grpc.aio.Server, db: Db, ca: Any) -> None:
        cfg = self.config
        if cfg.debug_listen:
            self._debug = DebugServer(REGISTRY, ready=lambda: self.ready)
            try:
                host, port = parse_hostport(cfg.debug_listen)
                bound = await self._debug.start(host, port)
                self.addresses["debug"] = f"{bound[0]}:{bound[1]}"
            except (OSError, ValueError) as exc:
                log.warning("debug http", extra=kv(addr=cfg.debug_listen, err=str(exc)))
                self._debug = None

        registry_hub: Hub[Any] = Hub("registry", cfg.watch_queue)
        policy_hub: Hub[Any] = Hub("policy", cfg.watch_queue)
        self._hubs = [registry_hub, policy_hub]
        registry_pb2_grpc.add_RegistryServicer_to_server(
            RegistryService(db, registry_hub, heartbeat_s=cfg.relay_heartbeat), server
        )
        policy_pb2_grpc.add_PolicyServicer_to_server(PolicyService(db, policy_hub), server)
        audit_pb2_grpc.add_AuditServicer_to_server(AuditService(db), server)
        enrollment = _enrollment(ca, db.store)
        if enrollment is not None:
            from outrelay.pki.enrollment import add_to_server

            add_to_server(enrollment, server)
        await server.start()
        self._started = True

        if cfg.audit_retention > 0:
            every = min(3600.0, max(1.0, cfg.audit_retention / 10))
            self._spawn(run_retention(db, cfg.audit_retention, every_s=every))
        if cfg.metrics_dump:
            self._spawn(run_dumper(REGISTRY, cfg.metrics_dump, cfg.metrics_interval))
        self.ready = True
        log.info(
            "controller listening",
            extra=kv(
                addr=self.addresses["grpc"],
                enroll=self.addresses.get("enroll", ""),
                debug=self.addresses.get("debug", ""),
                db=cfg.db,
                tls=not cfg.insecure,
                version=__version__,
            ),
        )
        if cfg.ready_file:
            write_ready_file(cfg.ready_file, self.addresses)

    @staticmethod
    def _bind(server: grpc.aio.Server, address: str, creds: grpc.ServerCredentials | None) -> str:
        host, _ = parse_hostport(address)  # checked already
        try:
            if creds is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, creds)
        except RuntimeError:
            port = 0
        if port == 0:
            raise BindError(f"listen {address}: {_bind_failure(address)}")
        return f"{host}:{port}"

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def stop(self) -> None:
        """Graceful stop: end watches, drain RPCs, close the database. Idempotent.

        Quiet when the server never started (a failed start says why in one line).
        """
        self.ready = False
        started, self._started = self._started, False
        if started:
            log.info("controller: graceful stop starting")
        for hub in self._hubs:
            hub.close_all()
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace)
            self._server = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._debug is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._debug.close(), 2.0)
            self._debug = None
        if self._db is not None:
            await asyncio.to_thread(self._db.close)
            self._db = None
        if started:
            log.info("controller: graceful stop complete")


async def serve(config: ControllerConfig, stop: asyncio.Event) -> None:
    """Run a controller until ``stop`` is set."""
    controller = Controller(config)
    await controller.start()
    try:
        await stop.wait()
    finally:
        await controller.stop()


def run(
    config: ControllerConfig,
    *,
    on_signal: Callable[[int], None] | None = None,
    loop: str = loops.DEFAULT,
) -> None:
    """Serve until SIGINT or SIGTERM (the ``outrelay controller`` command).

    Raises ConfigError (exit 2 in the CLI), BindError or StoreError (exit 1)
    when the controller cannot start.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):

            def handle(signum: int = signum) -> None:
                log.info(
                    "controller: signal received", extra=kv(signal=signal.Signals(signum).name)
                )
                if on_signal is not None:
                    on_signal(signum)
                stop.set()

            loop.add_signal_handler(signum, handle)
        await serve(config, stop)

    loops.run(main(), loop)
