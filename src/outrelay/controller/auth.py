"""Who may call what, on whose behalf: two tables applied before any handler.

The caller's identity comes only from the first URI SAN of the client
certificate that TLS verified (``outrelay://<region>/relay/<id>`` → relay,
``outrelay://<tenant>/admin/<name>`` → admin, ``…/agent/…`` → agent).

1. ``METHOD_ROLES`` maps a gRPC method to the roles that may call it. It is
   closed: a method not listed is denied to everyone. ``ANONYMOUS`` marks the
   one method that needs no certificate (Enrollment.Enroll, served on the
   TLS-only enrollment port).
2. ``SCOPES`` then ties a request field to the caller's own identity, per
   (method, role): an admin may only name its own tenant, a relay only its
   own relay id. A different non-empty value is PERMISSION_DENIED. An empty
   tenant in an admin request is filled in with the caller's tenant (the
   request object is changed before the handler sees it); an empty relay id
   is left for the handler to reject as a missing field.

Status codes: no certificate → UNAUTHENTICATED; a certificate without a
valid identity URI → UNAUTHENTICATED; a role the method does not allow, a
method missing from the table, or a request outside the caller's scope →
PERMISSION_DENIED.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from outrelay.identity import Identity, IdentityError, Role, peer_identity
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
    _R + "ListServices": frozenset({Role.ADMIN}),
    _R + "ListRelays": frozenset({Role.ADMIN}),
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


@dataclass(frozen=True)
class Scope:
    """A request field that must name the caller's own tenant or relay id."""

    #: field name as the refusal message shows it (``tenant``, ``rule.tenant``)
    field: str
    #: reads the field ('' if absent)
    get: Callable[[Any], str]
    #: writes the caller's own value into an empty field; None: leave it empty
    fill: Callable[[Any, str], None] | None = None


def _plain(name: str, *, fill: bool) -> Scope:
    def get(request: Any) -> str:
        return str(getattr(request, name))

    def put(request: Any, value: str) -> None:
        setattr(request, name, value)

    return Scope(name, get, put if fill else None)


def _rule_tenant_get(request: Any) -> str:
    return str(request.rule.tenant) if request.HasField("rule") else ""


def _rule_tenant_fill(request: Any, value: str) -> None:
    if request.HasField("rule"):  # no rule: the handler reports "rule: required"
        request.rule.tenant = value


_TENANT = _plain("tenant", fill=True)
_RULE_TENANT = Scope("rule.tenant", _rule_tenant_get, _rule_tenant_fill)
_RELAY_ID = _plain("relay_id", fill=False)

#: gRPC method path -> role -> the field that must name the caller's own
#: tenant (admin) or relay id (relay). Absent: the role is not scoped there
#: (relays serve every tenant; ListRelays is not per tenant).
SCOPES: dict[str, dict[Role, Scope]] = {
    _R + "RegisterService": {Role.RELAY: _RELAY_ID},
    _R + "DeregisterAgent": {Role.RELAY: _RELAY_ID},
    _R + "UpsertRelay": {Role.RELAY: _plain("id", fill=False)},
    _R + "Resolve": {Role.ADMIN: _TENANT},
    _R + "ListServices": {Role.ADMIN: _TENANT},
    _P + "AddPolicy": {Role.ADMIN: _RULE_TENANT},
    _P + "RemovePolicy": {Role.ADMIN: _TENANT},
    _P + "ListPolicies": {Role.ADMIN: _TENANT},
    _A + "Query": {Role.ADMIN: _TENANT},
}

log = logging.getLogger("outrelay.controller")

Refusal = tuple[grpc.StatusCode, str]


@functools.lru_cache(maxsize=1024)
def _identity_of(pem: bytes) -> Identity | str:
    """The identity in a verified certificate, or an error text."""
    try:
        return peer_identity(pem)
    except IdentityError as exc:
        return str(exc)


def authorize(method: str, pem: bytes | None) -> Identity | None | Refusal:
    """The caller's identity (None: anonymous and allowed) or the refusal status."""
    allowed = METHOD_ROLES.get(method)
    if allowed is None:
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} is not allowed for anyone"
    if pem is None:
        if ANONYMOUS in allowed:
            return None
        return grpc.StatusCode.UNAUTHENTICATED, f"{method} needs a client certificate (mTLS)"
    identity = _identity_of(pem)
    if isinstance(identity, str):
        return grpc.StatusCode.UNAUTHENTICATED, f"client certificate: {identity}"
    if identity.role not in allowed:
        names = ", ".join(sorted(str(r) for r in allowed if r != ANONYMOUS))
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method} needs role {names}, caller is {identity.role}",
        )
    return identity


def check_scope(method: str, caller: Identity | None, request: Any) -> Refusal | None:
    """None if ``request`` stays within ``caller``'s tenant or relay id, else the status.

    An empty field that the scope may fill (an admin's tenant) is set to the
    caller's own value, in place.
    """
    if caller is None:
        return None
    scope = SCOPES.get(method, {}).get(caller.role)
    if scope is None:
        return None
    kind, own = ("relay id", caller.id) if caller.role is Role.RELAY else ("tenant", caller.tenant)
    value = scope.get(request)
    if not value:
        if scope.fill is not None:
            scope.fill(request, own)
        return None
    if value != own:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{scope.field}: {caller} may only use its own {kind} {own!r}, not {value!r}",
        )
    return None


async def _guard(method: str, context: grpc.aio.ServicerContext[Any, Any], request: Any) -> None:
    certs = context.auth_context().get("x509_pem_cert")
    got = authorize(method, certs[0] if certs else None)
    refusal = got if isinstance(got, tuple) else check_scope(method, got, request)
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
                await _guard(method, context, request)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                await _guard(method, context, request)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )

        # no client-streaming methods exist; refuse rather than pass unchecked
        async def refuse(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not allowed")

        return grpc.unary_unary_rpc_method_handler(refuse)
