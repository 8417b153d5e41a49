from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_REGISTER: _ClassVar[EventKind]
    EVENT_KIND_DEREGISTER: _ClassVar[EventKind]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_REGISTER: EventKind
EVENT_KIND_DEREGISTER: EventKind

class RegisterServiceRequest(_message.Message):
    __slots__ = ("tenant", "service_name", "agent_uri", "relay_id", "local_addr")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_URI_FIELD_NUMBER: _ClassVar[int]
    RELAY_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDR_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service_name: str
    agent_uri: str
    relay_id: str
    local_addr: str
    def __init__(self, tenant: _Optional[str] = ..., service_name: _Optional[str] = ..., agent_uri: _Optional[str] = ..., relay_id: _Optional[str] = ..., local_addr: _Optional[str] = ...) -> None: ...

class RegisterServiceResponse(_message.Message):
    __slots__ = ("service_id",)
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    service_id: str
    def __init__(self, service_id: _Optional[str] = ...) -> None: ...

class DeregisterAgentRequest(_message.Message):
    __slots__ = ("tenant", "agent_uri", "relay_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    AGENT_URI_FIELD_NUMBER: _ClassVar[int]
    RELAY_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    agent_uri: str
    relay_id: str
    def __init__(self, tenant: _Optional[str] = ..., agent_uri: _Optional[str] = ..., relay_id: _Optional[str] = ...) -> None: ...

class DeregisterAgentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("tenant", "service_name", "caller_region")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    CALLER_REGION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service_name: str
    caller_region: str
    def __init__(self, tenant: _Optional[str] = ..., service_name: _Optional[str] = ..., caller_region: _Optional[str] = ...) -> None: ...

class Provider(_message.Message):
    __slots__ = ("service_id", "agent_uri", "relay_id", "local_addr", "updated_at_unix_ms", "relay_endpoint")
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_URI_FIELD_NUMBER: _ClassVar[int]
    RELAY_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDR_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RELAY_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    service_id: str
    agent_uri: str
    relay_id: str
    local_addr: str
    updated_at_unix_ms: int
    relay_endpoint: str
    def __init__(self, service_id: _Optional[str] = ..., agent_uri: _Optional[str] = ..., relay_id: _Optional[str] = ..., local_addr: _Optional[str] = ..., updated_at_unix_ms: _Optional[int] = ..., relay_endpoint: _Optional[str] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("providers",)
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[Provider]
    def __init__(self, providers: _Optional[_Iterable[_Union[Provider, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("tenant", "service_names")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAMES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    service_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant: _Optional[str] = ..., service_names: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("kind", "provider", "service_name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    kind: EventKind
    provider: Provider
    service_name: str
    def __init__(self, kind: _Optional[_Union[EventKind, str]] = ..., provider: _Optional[_Union[Provider, _Mapping]] = ..., service_name: _Optional[str] = ...) -> None: ...

class UpsertRelayRequest(_message.Message):
    __slots__ = ("id", "region", "endpoint")
    ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    id: str
    region: str
    endpoint: str
    def __init__(self, id: _Optional[str] = ..., region: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class UpsertRelayResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceEntry]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceEntry, _Mapping]]] = ...) -> None: ...

class ServiceEntry(_message.Message):
    __slots__ = ("service_name", "service_id", "created_at_unix_ms", "providers")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    service_id: str
    created_at_unix_ms: int
    providers: _containers.RepeatedCompositeFieldContainer[ProviderStatus]
    def __init__(self, service_name: _Optional[str] = ..., service_id: _Optional[str] = ..., created_at_unix_ms: _Optional[int] = ..., providers: _Optional[_Iterable[_Union[ProviderStatus, _Mapping]]] = ...) -> None: ...

class ProviderStatus(_message.Message):
    __slots__ = ("provider", "relay_region", "relay_last_heartbeat_unix_ms", "live", "agent_last_seen_unix_ms")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    RELAY_REGION_FIELD_NUMBER: _ClassVar[int]
    RELAY_LAST_HEARTBEAT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    AGENT_LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    provider: Provider
    relay_region: str
    relay_last_heartbeat_unix_ms: int
    live: bool
    agent_last_seen_unix_ms: int
    def __init__(self, provider: _Optional[_Union[Provider, _Mapping]] = ..., relay_region: _Optional[str] = ..., relay_last_heartbeat_unix_ms: _Optional[int] = ..., live: _Optional[bool] = ..., agent_last_seen_unix_ms: _Optional[int] = ...) -> None: ...

class ListRelaysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRelaysResponse(_message.Message):
    __slots__ = ("relays",)
    RELAYS_FIELD_NUMBER: _ClassVar[int]
    relays: _containers.RepeatedCompositeFieldContainer[RelayEntry]
    def __init__(self, relays: _Optional[_Iterable[_Union[RelayEntry, _Mapping]]] = ...) -> None: ...

class RelayEntry(_message.Message):
    __slots__ = ("id", "region", "endpoint", "last_heartbeat_unix_ms", "live")
    ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    id: str
    region: str
    endpoint: str
    last_heartbeat_unix_ms: int
    live: bool
    def __init__(self, id: _Optional[str] = ..., region: _Optional[str] = ..., endpoint: _Optional[str] = ..., last_heartbeat_unix_ms: _Optional[int] = ..., live: _Optional[bool] = ...) -> None: ...
