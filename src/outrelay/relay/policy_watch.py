"""Applying ``Policy.Watch`` events to the relay's engine (relay.md §16.3).

How this works. The relay keeps one watch subscription per configured
tenant. Each subscription starts with a snapshot: ADDED events are buffered
until SNAPSHOT_END, then that tenant's rules are replaced wholesale (other
tenants' rules stay). After the snapshot, ADDED upserts and REMOVED deletes.
REMOVED is applied at once even inside the snapshot phase (it may name a
rule buffered in this snapshot). Every applied change flushes the decision
cache. ADDED without a rule and REMOVED without an id are ignored. When a
subscription breaks the engine keeps its rules; the next subscription's
snapshot replaces them.

Sans-IO: the asyncio shell feeds events in; nothing here waits.
"""

from __future__ import annotations

from collections.abc import Callable

from outrelay.policy import PolicyEngine, Rule
from outrelay.policy.convert import rule_from_proto
from outrelay.proto import policy_pb2

ADDED = policy_pb2.PolicyEvent.POLICY_KIND_ADDED
REMOVED = policy_pb2.PolicyEvent.POLICY_KIND_REMOVED
SNAPSHOT_END = policy_pb2.PolicyEvent.POLICY_KIND_SNAPSHOT_END


class TenantWatch:
    """The state of one tenant's subscription."""

    def __init__(self, tenant: str, engine: PolicyEngine, on_change: Callable[[], None]) -> None:
        self.tenant = tenant
        self.engine = engine
        self.on_change = on_change
        #: rules of the snapshot being received; None outside a snapshot
        self._snapshot: dict[str, Rule] | None = None
        #: True once a snapshot has been applied (on any subscription)
        self.synced = False

    def subscribed(self) -> None:
        """A new subscription started: buffer until its SNAPSHOT_END."""
        self._snapshot = {}

    def apply(self, event: policy_pb2.PolicyEvent) -> bool:
        """Apply one event; return whether the engine changed (cache flushed)."""
        if event.kind == SNAPSHOT_END:
            return self._end_snapshot()
        if event.kind == ADDED:
            if not event.HasField("rule"):
                return False
            rule = rule_from_proto(event.rule)
            if self._snapshot is not None:
                self._snapshot[rule.id] = rule
                return False
            self.engine.add(rule)
            self.on_change()
            return True
        if event.kind == REMOVED:
            if not event.removed_id:
                return False
            if self._snapshot is not None:
                self._snapshot.pop(event.removed_id, None)
            self.engine.remove(event.removed_id)
            self.on_change()
            return True
        return False

    def _end_snapshot(self) -> bool:
        if self._snapshot is None:
            return False
        others = [rule for rule in self.engine.rules() if rule.tenant != self.tenant]
        self.engine.replace_all(others + list(self._snapshot.values()))
        self._snapshot = None
        self.synced = True
        self.on_change()
        return True


class PolicyWatcher:
    """One :class:`TenantWatch` per tenant, sharing an engine and a flush hook."""

    def __init__(
        self, tenants: list[str], engine: PolicyEngine, on_change: Callable[[], None]
    ) -> None:
        self.engine = engine
        self.tenants = {t: TenantWatch(t, engine, on_change) for t in tenants}

    @property
    def synced(self) -> bool:
        """True once every tenant has applied at least one snapshot."""
        return all(w.synced for w in self.tenants.values())
