from outrelay.proto import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditEvent(_message.Message):
    __slots__ = ("ts_unix_ms", "tenant", "caller", "target", "method", "decision", "reason", "stream_id")
    TS_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    ts_unix_ms: int
    tenant: str
    caller: str
    target: str
    method: str
    decision: _policy_pb2.Decision
    reason: str
    stream_id: str
    def __init__(self, ts_unix_ms: _Optional[int] = ..., tenant: _Optional[str] = ..., caller: _Optional[str] = ..., target: _Optional[str] = ..., method: _Optional[str] = ..., decision: _Optional[_Union[_policy_pb2.Decision, str]] = ..., reason: _Optional[str] = ..., stream_id: _Optional[str] = ...) -> None: ...

class RecordAuditRequest(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AuditEvent
    def __init__(self, event: _Optional[_Union[AuditEvent, _Mapping]] = ...) -> None: ...

class RecordAuditResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueryAuditRequest(_message.Message):
    __slots__ = ("tenant", "caller", "target", "since_unix_ms", "limit")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    caller: str
    target: str
    since_unix_ms: int
    limit: int
    def __init__(self, tenant: _Optional[str] = ..., caller: _Optional[str] = ..., target: _Optional[str] = ..., since_unix_ms: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class RecordBatchRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ...) -> None: ...

class RecordBatchResponse(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    def __init__(self, recorded: _Optional[int] = ...) -> None: ...
