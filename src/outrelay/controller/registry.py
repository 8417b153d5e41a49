"""``outrelay.control.v1.Registry``: which agent serves which service, where.

Differences from the reference (docs/controller.md): several agents may
provide one service; Resolve returns every live provider, same region first
and then most recently registered; a relay whose last UpsertRelay heartbeat
is older than ``stale_after`` has its providers left out; requests without
a tenant are INVALID_ARGUMENT; a slow watcher ends with RESOURCE_EXHAUSTED.

Registrations are checked (OutRelay extension, the reference checks
neither): the service name must follow the rule of ``outrelay.policy.names``
(else INVALID_ARGUMENT), and a bind rule of the tenant must allow the agent
to provide the name, closed world: no matching ALLOW bind rule, or a
matching DENY, is PERMISSION_DENIED with the reason. Dial rules never grant
a registration. Bind rules are read from the store on every registration,
so a rule added or removed applies to the next RegisterService.

OutRelay extensions for operators: ListServices (every service of a tenant
with all providers, stale ones flagged) and ListRelays (every relay with a
live/stale flag). Who may name which tenant or relay id is decided before
the handler runs, in ``controller/auth.py``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from outrelay.controller.base import (
    Db,
    InvalidArgument,
    PermissionDenied,
    require,
    require_tenant,
    rpc_errors,
    stream_errors,
)
from outrelay.controller.hub import Hub
from outrelay.controller.store import (
    ListedProvider,
    ProviderRow,
    RelayRow,
    ServiceRow,
    Store,
    now_ms,
)
from outrelay.identity import valid_label
from outrelay.observe import kv
from outrelay.policy import Action, PolicyEngine
from outrelay.policy.bind import check_bind
from outrelay.policy.names import InvalidServiceName, check_service_name
from outrelay.proto import registry_pb2 as pb
from outrelay.proto import registry_pb2_grpc as pb_grpc

#: Default relay heartbeat interval; a relay is stale after 3 of them.
DEFAULT_HEARTBEAT_S = 10.0

log = logging.getLogger("outrelay.controller")

#: (tenant, service name, WatchEvent)
RegistryEvent = tuple[str, str, pb.WatchEvent]


def provider_pb(row: ProviderRow) -> pb.Provider:
    """The wire form of a provider row."""
    return pb.Provider(
        service_id=row.service_id,
        agent_uri=row.agent_uri,
        relay_id=row.relay_id,
        local_addr=row.local_addr,
        updated_at_unix_ms=row.updated_at_unix_ms,
        relay_endpoint=row.relay_endpoint,
    )


def service_entry_pb(service: ServiceRow, stale_before_ms: int) -> pb.ServiceEntry:
    """The wire form of a listed service; ``stale_before_ms`` decides liveness."""

    def status(p: ListedProvider) -> pb.ProviderStatus:
        heartbeat = p.relay_last_heartbeat_unix_ms
        return pb.ProviderStatus(
            provider=provider_pb(p.row),
            relay_region=p.row.relay_region,
            relay_last_heartbeat_unix_ms=heartbeat,
            # as Resolve: a relay that never sent a heartbeat does not hide its providers
            live=heartbeat == 0 or heartbeat >= stale_before_ms,
            agent_last_seen_unix_ms=p.agent_last_seen_unix_ms,
        )

    return pb.ServiceEntry(
        service_name=service.name,
        service_id=service.service_id,
        created_at_unix_ms=service.created_at_unix_ms,
        providers=[status(p) for p in service.providers],
    )


def relay_entry_pb(relay: RelayRow, stale_before_ms: int) -> pb.RelayEntry:
    """The wire form of a relay; live if its last heartbeat is not older than the bound."""
    return pb.RelayEntry(
        id=relay.id,
        region=relay.region,
        endpoint=relay.endpoint,
        last_heartbeat_unix_ms=relay.last_heartbeat_unix_ms,
        live=relay.last_heartbeat_unix_ms >= stale_before_ms,
    )


def check_registration(request: pb.RegisterServiceRequest) -> None:
    """Refuse a malformed RegisterService (InvalidArgument naming the field)."""
    require(request.service_name, "service_name")
    try:
        check_service_name(request.service_name)
    except InvalidServiceName as exc:
        raise InvalidArgument(f"service_name: {exc}") from None
    require(request.agent_uri, "agent_uri")


def bind_check(store: Store, tenant: str, agent_uri: str, service: str, now: int) -> str:
    """The refusal of one registration by the stored bind rules, "" if allowed (db thread)."""
    engine = PolicyEngine(store.list_policies(tenant, Action.BIND))
    return check_bind(engine, tenant, agent_uri, service, now)


class RegistryService(pb_grpc.RegistryServicer):
    """Servicer of ``outrelay.control.v1.Registry``."""

    def __init__(
        self,
        db: Db,
        hub: Hub[RegistryEvent],
        *,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._db = db
        self._hub = hub
        self._stale_after_ms = int(3 * heartbeat_s * 1000)
        self._clock = clock

    def _stale_before(self) -> int:
        """Relays whose last heartbeat is older than this (ms) are stale."""
        return self._clock() - self._stale_after_ms

    def _publish(self, kind: int, row: ProviderRow) -> None:
        event = pb.WatchEvent(kind=kind, provider=provider_pb(row), service_name=row.service_name)  # type: ignore[arg-type]
        self._hub.publish(row.tenant, (row.tenant, row.service_name, event))

    @rpc_errors("registry_register")
    async def RegisterService(  # noqa: N802 - gRPC method name
        self, request: pb.RegisterServiceRequest, context: Any
    ) -> pb.RegisterServiceResponse:
        tenant = require_tenant(request.tenant)
        check_registration(request)
        require(request.relay_id, "relay_id")
        refusal = await self._db.call(
            bind_check,
            self._db.store,
            tenant,
            request.agent_uri,
            request.service_name,
            self._clock(),
        )
        if refusal:
            log.warning(
                "registry: registration refused",
                extra=kv(tenant=tenant, service=request.service_name, agent=request.agent_uri),
            )
            raise PermissionDenied(refusal)
        row = await self._db.call(
            self._db.store.register_provider,
            tenant,
            request.service_name,
            request.agent_uri,
            request.relay_id,
            request.local_addr,
        )
        log.info(
            "registry: service registered",
            extra=kv(
                tenant=tenant,
                service=row.service_name,
                agent=row.agent_uri,
                relay=row.relay_id,
                service_id=row.service_id,
            ),
        )
        self._publish(pb.EVENT_KIND_REGISTER, row)
        return pb.RegisterServiceResponse(service_id=row.service_id)

    @rpc_errors("registry_deregister")
    async def DeregisterAgent(  # noqa: N802
        self, request: pb.DeregisterAgentRequest, context: Any
    ) -> pb.DeregisterAgentResponse:
        tenant = require_tenant(request.tenant)
        require(request.agent_uri, "agent_uri")
        require(request.relay_id, "relay_id")
        rows = await self._db.call(
            self._db.store.deregister_agent, tenant, request.agent_uri, request.relay_id
        )
        log.info(
            "registry: agent deregistered",
            extra=kv(
                tenant=tenant,
                agent=request.agent_uri,
                relay=request.relay_id,
                removed_count=len(rows),
            ),
        )
        for row in rows:
            self._publish(pb.EVENT_KIND_DEREGISTER, row)
        return pb.DeregisterAgentResponse()

    @rpc_errors("registry_resolve")
    async def Resolve(  # noqa: N802
        self, request: pb.ResolveRequest, context: Any
    ) -> pb.ResolveResponse:
        tenant = require_tenant(request.tenant)
        require(request.service_name, "service_name")
        rows = await self._db.call(
            self._db.store.resolve,
            tenant,
            request.service_name,
            request.caller_region,
            self._stale_before(),
        )
        return pb.ResolveResponse(providers=[provider_pb(row) for row in rows])

    @rpc_errors("registry_upsert_relay")
    async def UpsertRelay(  # noqa: N802
        self, request: pb.UpsertRelayRequest, context: Any
    ) -> pb.UpsertRelayResponse:
        require(request.id, "id")
        if not valid_label(request.id):
            raise InvalidArgument(f"id: {request.id!r} is not a valid relay id label")
        require(request.endpoint, "endpoint")
        await self._db.call(
            self._db.store.upsert_relay, request.id, request.region, request.endpoint
        )
        log.debug(
            "registry: relay upserted",
            extra=kv(relay_id=request.id, region=request.region, endpoint=request.endpoint),
        )
        return pb.UpsertRelayResponse()

    @rpc_errors("registry_list_services")
    async def ListServices(  # noqa: N802
        self, request: pb.ListServicesRequest, context: Any
    ) -> pb.ListServicesResponse:
        tenant = require_tenant(request.tenant)
        services = await self._db.call(self._db.store.list_services, tenant)
        stale_before = self._stale_before()
        log.debug("registry: services listed", extra=kv(tenant=tenant, service_count=len(services)))
        return pb.ListServicesResponse(
            services=[service_entry_pb(s, stale_before) for s in services]
        )

    @rpc_errors("registry_list_relays")
    async def ListRelays(  # noqa: N802
        self, request: pb.ListRelaysRequest, context: Any
    ) -> pb.ListRelaysResponse:
        relays = await self._db.call(self._db.store.list_relays)
        stale_before = self._stale_before()
        return pb.ListRelaysResponse(relays=[relay_entry_pb(r, stale_before) for r in relays])

    @stream_errors
    async def Watch(  # noqa: N802
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchEvent]:
        tenant = require_tenant(request.tenant)
        names = frozenset(request.service_names)
        wanted = self._hub.subscription(tenant, lambda ev: not names or ev[1] in names)
        async with wanted as watcher:
            async for _tenant, _name, event in self._hub.events(watcher):
                yield event
