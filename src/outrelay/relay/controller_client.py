"""The relay's gRPC client of the controller (mTLS with the relay's own certificate).

The controller is checked by role: the TLS name verified in its certificate
is always :data:`~outrelay.identity.CONTROLLER_NAME`, whatever address is
dialled, so a relay's or agent's certificate (even one for ``localhost``)
cannot stand in for the controller.

Each RPC the core asks for goes through :meth:`ControllerClient.call`, which
turns gRPC failures into :class:`~outrelay.relay.errors.ControllerError`
carrying the status name. Streams (``Policy.Watch``) use the stubs directly.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from outrelay.identity.roles import (
    CONTROLLER_NAME,
    CONTROLLER_NAME_OPTION,
    explain_controller_refusal,
)
from outrelay.proto import (
    audit_pb2,
    audit_pb2_grpc,
    policy_pb2_grpc,
    registry_pb2_grpc,
)
from outrelay.relay.errors import ControllerError

log = logging.getLogger("outrelay.relay")

#: gRPC channel reconnect backoff, first and largest (milliseconds).
RECONNECT_INITIAL_MS = 100
RECONNECT_MAX_MS = 500


def error_of(exc: grpc.aio.AioRpcError) -> ControllerError:
    """The ControllerError for a failed RPC."""
    code = exc.code()
    status = code.name if code is not None else "UNKNOWN"
    return ControllerError(explain_controller_refusal(exc.details() or status), status=status)


class ControllerClient:
    """Registry, Policy and Audit stubs on one channel."""

    def __init__(
        self,
        target: str,
        *,
        cert: str = "",
        key: str = "",
        ca: str = "",
        server_name: str = "",
        insecure: bool = False,
    ) -> None:
        """Build the channel (connects lazily).

        ``server_name`` is ignored (with a warning): the name checked is the
        controller's role name.

        Raises:
            OSError: a certificate, key or CA file cannot be read.
        """
        # Reconnect quickly after a controller outage (gRPC's default backoff
        # grows to 120 s): a watch waiting for the channel resumes within
        # about half a second of the controller coming back.
        options: list[tuple[str, Any]] = [
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_INITIAL_MS),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
        ]
        if insecure:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(ca).read_bytes(),
                private_key=Path(key).read_bytes(),
                certificate_chain=Path(cert).read_bytes(),
            )
            if server_name and server_name != CONTROLLER_NAME:
                log.warning(
                    "--controller-server-name is ignored: the controller is checked by "
                    f"its role name {CONTROLLER_NAME}"
                )
            options.append(CONTROLLER_NAME_OPTION)
            self.channel = grpc.aio.secure_channel(target, creds, options=options)
        self.registry = registry_pb2_grpc.RegistryStub(self.channel)
        self.policy = policy_pb2_grpc.PolicyStub(self.channel)
        self.audit = audit_pb2_grpc.AuditStub(self.channel)

    async def call(self, method: str, request: Message, timeout: float | None = None) -> Any:
        """Run the unary Registry RPC ``method``; return its response.

        Raises:
            ControllerError: the RPC failed (``status`` names the gRPC code).
        """
        rpc = getattr(self.registry, method)
        try:
            return await rpc(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_of(exc) from None

    async def record(self, events: list[audit_pb2.AuditEvent], timeout: float = 10.0) -> None:
        """Send audit events, in one RecordBatch (or one Record each if unsupported).

        Raises:
            ControllerError: the controller did not take them.
        """
        try:
            await self.audit.RecordBatch(
                audit_pb2.RecordBatchRequest(events=events), timeout=timeout
            )
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise error_of(exc) from None
        for event in events:
            try:
                await self.audit.Record(audit_pb2.RecordAuditRequest(event=event), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                raise error_of(exc) from None

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the channel to connect; return whether it did.

        Used between start-up attempts: the next one goes out as soon as
        the controller accepts a connection instead of after the full pause.
        """
        try:
            async with asyncio.timeout(timeout):
                await self.channel.channel_ready()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close the channel (in-flight RPCs are cancelled)."""
        await self.channel.close()
