"""``outrelay.control.v1.Policy``: store policy rules and stream them to relays.

Differences from the reference (docs/controller.md): rules are validated
(tenant label; a caller pattern ``*`` or an ``outrelay://`` glob; a target
pattern that is a service name or a glob over them, or for a dial rule an
identity glob -- see ``outrelay.policy.names``; decision ALLOW or DENY, known
modes and action, no method on a bind rule, expiry 0 or in the future) and
bad ones are INVALID_ARGUMENT naming the field; rules carry the OutRelay
``action`` extension (DIAL, the default, or BIND: who may register a
service, checked by the Registry on RegisterService); a duplicate id is ALREADY_EXISTS; live
ADDED events carry the stored rule (server created_at, normalised enums);
Watch registers its watcher *before* reading the snapshot, so no rule added
meanwhile is lost (it may arrive twice: consumers upsert by id).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from outrelay.controller.base import (
    Db,
    InvalidArgument,
    require,
    require_tenant,
    rpc_errors,
    stream_errors,
)
from outrelay.controller.hub import Hub
from outrelay.controller.store import now_ms
from outrelay.observe import REGISTRY, kv
from outrelay.policy import Action, P2PMode, RelayMode, Rule, Verdict
from outrelay.policy.convert import rule_to_proto
from outrelay.policy.names import InvalidPattern, check_caller_pattern, check_target_pattern
from outrelay.proto import policy_pb2 as pb
from outrelay.proto import policy_pb2_grpc as pb_grpc

#: Longest accepted pattern or id.
MAX_FIELD = 1024

_P2P_NUMBERS = frozenset(int(m) for m in P2PMode)
_RELAY_MODE_NUMBERS = frozenset(int(m) for m in RelayMode)
_ACTION_NUMBERS = frozenset(int(m) for m in Action)

log = logging.getLogger("outrelay.controller")


def _pattern(value: str, field: str) -> str:
    require(value, field)
    _text(value, field)
    return value


def _text(value: str, field: str) -> None:
    if len(value) > MAX_FIELD:
        raise InvalidArgument(f"{field}: longer than {MAX_FIELD} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidArgument(f"{field}: contains control characters")


def validate_rule(msg: pb.PolicyRule, now: int) -> Rule:
    """The ``Rule`` for an AddPolicy request; raises InvalidArgument naming the field."""
    tenant = require_tenant(msg.tenant, "rule.tenant")
    if msg.action not in _ACTION_NUMBERS:
        raise InvalidArgument(f"rule.action: unknown value {msg.action}")
    action = Action(msg.action)
    caller = _pattern(msg.caller_pattern, "rule.caller_pattern")
    target = _pattern(msg.target_pattern, "rule.target_pattern")
    try:
        check_caller_pattern(caller, "rule.caller_pattern")
        check_target_pattern(target, bind=action is Action.BIND, field="rule.target_pattern")
    except InvalidPattern as exc:
        raise InvalidArgument(str(exc)) from None
    _text(msg.method_pattern, "rule.method_pattern")
    if action is Action.BIND and msg.method_pattern:
        raise InvalidArgument("rule.method_pattern: bind rules have no method (leave it empty)")
    if msg.decision not in (Verdict.ALLOW, Verdict.DENY):
        raise InvalidArgument("rule.decision: must be DECISION_ALLOW or DECISION_DENY")
    if msg.p2p_mode not in _P2P_NUMBERS:
        raise InvalidArgument(f"rule.p2p_mode: unknown value {msg.p2p_mode}")
    if msg.relay_mode not in _RELAY_MODE_NUMBERS:
        raise InvalidArgument(f"rule.relay_mode: unknown value {msg.relay_mode}")
    if msg.expires_unix_ms != 0 and msg.expires_unix_ms <= now:
        raise InvalidArgument("rule.expires_unix_ms: must be 0 (never) or in the future")
    rule_id = msg.id or str(uuid.uuid4())
    _text(rule_id, "rule.id")
    if rule_id.strip() != rule_id:
        raise InvalidArgument("rule.id: must not start or end with whitespace")
    return Rule(
        id=rule_id,
        tenant=tenant,
        caller_pattern=caller,
        target_pattern=target,
        method_pattern=msg.method_pattern,
        verdict=Verdict(msg.decision),
        expires_unix_ms=msg.expires_unix_ms,
        p2p_mode=P2PMode(msg.p2p_mode),
        relay_mode=RelayMode(msg.relay_mode),
        action=action,
    )


class PolicyService(pb_grpc.PolicyServicer):
    """Servicer of ``outrelay.control.v1.Policy``."""

    def __init__(self, db: Db, hub: Hub[pb.PolicyEvent], *, clock: Callable[[], int] = now_ms):
        self._db = db
        self._hub = hub
        self._clock = clock
        self._added = REGISTRY.counter("policy_rules_added_total")
        self._removed = REGISTRY.counter("policy_rules_removed_total")

    @rpc_errors("policy_add")
    async def AddPolicy(  # noqa: N802 - gRPC method name
        self, request: pb.AddPolicyRequest, context: Any
    ) -> pb.AddPolicyResponse:
        if not request.HasField("rule"):
            raise InvalidArgument("rule: required")
        rule = validate_rule(request.rule, self._clock())
        stored = await self._db.call(self._db.store.add_policy, rule)
        self._added.inc()
        log.info(
            "policy: rule added",
            extra=kv(
                tenant=stored.tenant,
                rule_id=stored.id,
                caller=stored.caller_pattern,
                target=stored.target_pattern,
                method=stored.method_pattern,
                decision=stored.verdict.name,
                p2p_mode=stored.p2p_mode.name,
                relay_mode=stored.relay_mode.name,
                action=stored.action.name,
            ),
        )
        event = pb.PolicyEvent(kind=pb.PolicyEvent.POLICY_KIND_ADDED, rule=rule_to_proto(stored))
        self._hub.publish(stored.tenant, event)
        return pb.AddPolicyResponse(id=stored.id)

    @rpc_errors("policy_remove")
    async def RemovePolicy(  # noqa: N802
        self, request: pb.RemovePolicyRequest, context: Any
    ) -> pb.RemovePolicyResponse:
        tenant = require_tenant(request.tenant)
        require(request.id, "id")
        removed = await self._db.call(self._db.store.remove_policy, tenant, request.id)
        if removed:
            self._removed.inc()
            log.info("policy: rule removed", extra=kv(tenant=tenant, rule_id=request.id))
            event = pb.PolicyEvent(kind=pb.PolicyEvent.POLICY_KIND_REMOVED, removed_id=request.id)
            self._hub.publish(tenant, event)
        else:
            log.debug(
                "policy: remove no-op (not found)", extra=kv(tenant=tenant, rule_id=request.id)
            )
        return pb.RemovePolicyResponse(removed=removed)

    @rpc_errors("policy_list")
    async def ListPolicies(  # noqa: N802
        self, request: pb.ListPoliciesRequest, context: Any
    ) -> pb.ListPoliciesResponse:
        tenant = require_tenant(request.tenant)
        rules = await self._db.call(self._db.store.list_policies, tenant)
        return pb.ListPoliciesResponse(rules=[rule_to_proto(r) for r in rules])

    @stream_errors
    async def Watch(  # noqa: N802
        self, request: pb.WatchPoliciesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.PolicyEvent]:
        tenant = require_tenant(request.tenant)
        async with self._hub.subscription(tenant) as watcher:
            # registered first: an add racing the snapshot read is queued, not lost
            rules = await self._db.call(self._db.store.list_policies, tenant)
            log.info(
                "policy: watch started",
                extra=kv(watcher_id=watcher.id, tenant=tenant, rule_count=len(rules)),
            )
            for rule in rules:
                yield pb.PolicyEvent(
                    kind=pb.PolicyEvent.POLICY_KIND_ADDED, rule=rule_to_proto(rule)
                )
            yield pb.PolicyEvent(kind=pb.PolicyEvent.POLICY_KIND_SNAPSHOT_END)
            async for event in self._hub.events(watcher):
                yield event
