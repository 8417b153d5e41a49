"""Who may call what: one table from gRPC method to allowed roles.

The caller's role comes from the first URI SAN of the client certificate
that TLS verified (``outrelay://…/relay/…`` → relay, ``…/admin/…`` → admin,
``…/agent/…`` → agent). The table is closed: a method not listed is denied
to everyone. ``ANONYMOUS`` marks the one method that needs no certificate
(Enrollment.Enroll, served on the TLS-only enrollment port).

Status codes: no certificate → UNAUTHENTICATED; a certificate without a
valid identity URI → UNAUTHENTICATED; a role the method does not allow, or
a method missing from the table → PERMISSION_DENIED.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from outrelay.identity import IdentityError, Role, peer_identity
from outrelay.observe import kv

#: Marker in ``METHOD_ROLES`` for "no client certificate needed".
ANONYMOUS = "anonymous"

_R = "/outrelay.control.v1.Registry/"
_P = "/outrelay.control.v1.Policy/"
_A = "/outrelay.control.v1.Audit/"
_E = "/outrelay.control.v1.Enrollment/"

#: gRPC method path -> roles that may call it. Anything absent is denied.
METHOD_ROLES: dict[str, frozenset[object]] = {
    _R + "RegisterService": frozenset({Role.RELAY}),
    _R + "DeregisterAgent": frozenset({Role.RELAY}),
    _R + "Resolve": frozenset({Role.RELAY, Role.ADMIN}),
    _R + "Watch": frozenset({Role.RELAY}),
    _R + "UpsertRelay": frozenset({Role.RELAY}),
    _P + "AddPolicy": frozenset({Role.ADMIN}),
    _P + "RemovePolicy": frozenset({Role.ADMIN}),
    _P + "ListPolicies": frozenset({Role.RELAY, Role.ADMIN}),
    _P + "Watch": frozenset({Role.RELAY}),
    _A + "Record": frozenset({Role.RELAY}),
    _A + "RecordBatch": frozenset({Role.RELAY}),
    _A + "Query": frozenset({Role.ADMIN}),
    _E + "Enroll": frozenset({ANONYMOUS, Role.AGENT, Role.RELAY, Role.ADMIN}),
    _E + "Renew": frozenset({Role.AGENT, Role.RELAY, Role.ADMIN}),
    _E + "IssueToken": frozenset({Role.ADMIN}),
}

log = logging.getLogger("outrelay.controller")


@functools.lru_cache(maxsize=1024)
def _role_of(pem: bytes) -> Role | str:
    """The role in a verified certificate, or an error text."""
    try:
        return peer_identity(pem).role
    except IdentityError as exc:
        return str(exc)


def check(method: str, pem: bytes | None) -> tuple[grpc.StatusCode, str] | None:
    """None if a caller with certificate ``pem`` may call ``method``, else the status."""
    allowed = METHOD_ROLES.get(method)
    if allowed is None:
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} is not allowed for anyone"
    if pem is None:
        if ANONYMOUS in allowed:
            return None
        return grpc.StatusCode.UNAUTHENTICATED, f"{method} needs a client certificate (mTLS)"
    role = _role_of(pem)
    if isinstance(role, str):
        return grpc.StatusCode.UNAUTHENTICATED, f"client certificate: {role}"
    if role not in allowed:
        names = ", ".join(sorted(str(r) for r in allowed if r != ANONYMOUS))
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} needs role {names}, caller is {role}"
    return None


async def _guard(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    certs = context.auth_context().get("x509_pem_cert")
    refusal = check(method, certs[0] if certs else None)
    if refusal is not None:
        log.info("auth: call refused", extra=kv(method=method, reason=refusal[1]))
        await context.abort(*refusal)


class RoleInterceptor(grpc.aio.ServerInterceptor):
    """Server interceptor applying ``METHOD_ROLES`` before any handler runs."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                await _guard(method, context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                await _guard(method, context)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )

        # no client-streaming methods exist; refuse rather than pass unchecked
        async def refuse(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not allowed")

        return grpc.unary_unary_rpc_method_handler(refuse)
