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
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from outrelay import __version__
from outrelay.childproc import write_ready_file
from outrelay.controller.audit import AuditService, run_retention
from outrelay.controller.auth import RoleInterceptor
from outrelay.controller.base import Db
from outrelay.controller.config import ControllerConfig
from outrelay.controller.hub import Hub
from outrelay.controller.policy_service import PolicyService
from outrelay.controller.registry import RegistryService
from outrelay.controller.store import Store
from outrelay.errors import OutRelayError
from outrelay.observe import REGISTRY, DebugServer, kv, parse_hostport, run_dumper
from outrelay.proto import audit_pb2_grpc, policy_pb2_grpc, registry_pb2_grpc

log = logging.getLogger("outrelay.controller")

#: Larger than the default 4 MiB so big policy lists still fit in one reply.
MAX_MESSAGE = 16 * 1024 * 1024


class ConfigError(OutRelayError):
    """The configuration cannot work (missing files, bad address)."""


def _read(path: str | None, what: str) -> bytes:
    if not path:
        raise ConfigError(f"--{what} is required unless --insecure is given")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"--{what} {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class _Tls:
    """The controller's key, certificate and CA, read once at start-up (PEM)."""

    key: bytes
    cert: bytes
    ca: bytes

    @classmethod
    def read(cls, config: ControllerConfig) -> _Tls:
        """Read the files in the order key, cert, CA (the first failure is reported)."""
        return cls(_read(config.key, "key"), _read(config.cert, "cert"), _read(config.ca, "ca"))

    def credentials(self, *, mtls: bool) -> grpc.ServerCredentials:
        """Server credentials; with ``mtls`` clients must present a certificate of the CA."""
        if mtls:
            return grpc.ssl_server_credentials(
                [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
            )
        return grpc.ssl_server_credentials([(self.key, self.cert)])


def _enrollment(config: ControllerConfig, store: Store, tls: _Tls | None) -> Any:
    """The Enrollment servicer if a CA key was given, else None.

    ``tls`` holds the CA certificate already read (None with ``insecure``).
    """
    if not config.ca_key:
        return None
    from outrelay.pki.ca import CA
    from outrelay.pki.enrollment import EnrollmentService
    from outrelay.pki.tokens import TokenIssuer, TokenVerifier

    ca_pem = tls.ca if tls is not None else _read(config.ca, "ca")
    try:
        ca = CA.from_pem(ca_pem, _read(config.ca_key, "ca-key"))
    except OutRelayError:
        raise
    except Exception as exc:  # the pki's own errors, named in the message
        raise ConfigError(f"cannot load the CA: {exc}") from None
    return EnrollmentService(ca, TokenVerifier(store), TokenIssuer(store))


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

    async def start(self) -> None:
        """Open the store, bind every port and start serving.

        Raises ConfigError (bad files or addresses) or StoreError.
        """
        cfg = self.config
        if cfg.insecure:
            log.warning(
                "controller: INSECURE MODE: plaintext gRPC, no authentication, every "
                "caller may call every method; never use this outside local experiments"
            )
        # Bad credentials are a usage error: say so before creating a database.
        self._tls = None if cfg.insecure else _Tls.read(cfg)
        store = Store(cfg.db)
        self._db = db = Db(store)
        try:
            await self._start_services(db)
        except BaseException:
            await self.stop()
            raise

    async def _start_services(self, db: Db) -> None:
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
        options = [
            ("grpc.so_reuseport", 0),  # a second controller on the same port must fail
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        interceptors = [] if cfg.insecure else [RoleInterceptor()]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        self._server = server
        registry_pb2_grpc.add_RegistryServicer_to_server(
            RegistryService(db, registry_hub, heartbeat_s=cfg.relay_heartbeat), server
        )
        policy_pb2_grpc.add_PolicyServicer_to_server(PolicyService(db, policy_hub), server)
        audit_pb2_grpc.add_AuditServicer_to_server(AuditService(db), server)
        enrollment = _enrollment(cfg, db.store, self._tls)
        if enrollment is not None:
            from outrelay.pki.enrollment import add_to_server

            add_to_server(enrollment, server)

        tls = self._tls
        self.addresses["grpc"] = self._bind(
            server, cfg.listen, None if tls is None else tls.credentials(mtls=True)
        )
        if enrollment is not None and cfg.enroll_listen and tls is not None:
            self.addresses["enroll"] = self._bind(
                server, cfg.enroll_listen, tls.credentials(mtls=False)
            )
        await server.start()

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
        try:
            host, _ = parse_hostport(address)
            if creds is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, creds)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"listen {address}: {exc}") from None
        if port == 0:
            raise ConfigError(f"listen {address}: cannot bind")
        return f"{host}:{port}"

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def stop(self) -> None:
        """Graceful stop: end watches, drain RPCs, close the database. Idempotent."""
        self.ready = False
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
        log.info("controller: graceful stop complete")


async def serve(config: ControllerConfig, stop: asyncio.Event) -> None:
    """Run a controller until ``stop`` is set."""
    controller = Controller(config)
    await controller.start()
    try:
        await stop.wait()
    finally:
        await controller.stop()


def run(config: ControllerConfig, *, on_signal: Callable[[int], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM (the ``outrelay controller`` command).

    Raises ConfigError or StoreError when the controller cannot start.
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

    asyncio.run(main())
