from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_DENY: _ClassVar[Decision]

class RuleAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RULE_ACTION_DIAL: _ClassVar[RuleAction]
    RULE_ACTION_BIND: _ClassVar[RuleAction]

class RelayMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELAY_MODE_SPLICE: _ClassVar[RelayMode]
    RELAY_MODE_FORWARD: _ClassVar[RelayMode]

class P2PMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    P2P_ALLOWED: _ClassVar[P2PMode]
    P2P_FORBIDDEN: _ClassVar[P2PMode]
    P2P_REQUIRED: _ClassVar[P2PMode]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_DENY: Decision
RULE_ACTION_DIAL: RuleAction
RULE_ACTION_BIND: RuleAction
RELAY_MODE_SPLICE: RelayMode
RELAY_MODE_FORWARD: RelayMode
P2P_ALLOWED: P2PMode
P2P_FORBIDDEN: P2PMode
P2P_REQUIRED: P2PMode

class PolicyRule(_message.Message):
    __slots__ = ("id", "tenant", "caller_pattern", "target_pattern", "method_pattern", "decision", "expires_unix_ms", "created_at_unix_ms", "p2p_mode", "relay_mode", "action")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CALLER_PATTERN_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATTERN_FIELD_NUMBER: _ClassVar[int]
    METHOD_PATTERN_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    P2P_MODE_FIELD_NUMBER: _ClassVar[int]
    RELAY_MODE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant: str
    caller_pattern: str
    target_pattern: str
    method_pattern: str
    decision: Decision
    expires_unix_ms: int
    created_at_unix_ms: int
    p2p_mode: P2PMode
    relay_mode: RelayMode
    action: RuleAction
    def __init__(self, id: _Optional[str] = ..., tenant: _Optional[str] = ..., caller_pattern: _Optional[str] = ..., target_pattern: _Optional[str] = ..., method_pattern: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., expires_unix_ms: _Optional[int] = ..., created_at_unix_ms: _Optional[int] = ..., p2p_mode: _Optional[_Union[P2PMode, str]] = ..., relay_mode: _Optional[_Union[RelayMode, str]] = ..., action: _Optional[_Union[RuleAction, str]] = ...) -> None: ...

class AddPolicyRequest(_message.Message):
    __slots__ = ("rule",)
    RULE_FIELD_NUMBER: _ClassVar[int]
    rule: PolicyRule
    def __init__(self, rule: _Optional[_Union[PolicyRule, _Mapping]] = ...) -> None: ...

class AddPolicyResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RemovePolicyRequest(_message.Message):
    __slots__ = ("tenant", "id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    id: str
    def __init__(self, tenant: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class RemovePolicyResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[PolicyRule]
    def __init__(self, rules: _Optional[_Iterable[_Union[PolicyRule, _Mapping]]] = ...) -> None: ...

class WatchPoliciesRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class PolicyEvent(_message.Message):
    __slots__ = ("kind", "rule", "removed_id")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        POLICY_KIND_UNSPECIFIED: _ClassVar[PolicyEvent.Kind]
        POLICY_KIND_ADDED: _ClassVar[PolicyEvent.Kind]
        POLICY_KIND_REMOVED: _ClassVar[PolicyEvent.Kind]
        POLICY_KIND_SNAPSHOT_END: _ClassVar[PolicyEvent.Kind]
    POLICY_KIND_UNSPECIFIED: PolicyEvent.Kind
    POLICY_KIND_ADDED: PolicyEvent.Kind
    POLICY_KIND_REMOVED: PolicyEvent.Kind
    POLICY_KIND_SNAPSHOT_END: PolicyEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REMOVED_ID_FIELD_NUMBER: _ClassVar[int]
    kind: PolicyEvent.Kind
    rule: PolicyRule
    removed_id: str
    def __init__(self, kind: _Optional[_Union[PolicyEvent.Kind, str]] = ..., rule: _Optional[_Union[PolicyRule, _Mapping]] = ..., removed_id: _Optional[str] = ...) -> None: ...
