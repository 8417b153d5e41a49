"""The policy decision engine shared by the controller's tests and the relay.

How this works. Rules are kept per tenant in two classes:

* *exact* rules, whose target pattern has no ``*``, live in a dict keyed by
  the literal target, so finding the candidates for a target costs one
  lookup no matter how many rules exist;
* *wildcard* rules, whose target pattern has a ``*``, are grouped by the
  literal prefix before their first ``*`` (``svc-*`` under ``svc-``, ``*``
  under ``""``); a decision looks only at the groups whose prefix starts the
  target, so it costs one lookup per distinct prefix length, not one match
  per rule. Only rules sharing a prefix are scanned one by one.

``decide`` looks at the exact bucket of the target first and only falls back
to the wildcard list if no exact rule matches. Within a class the order is
deterministic (the reference's is random): every ``DENY`` comes before every
``ALLOW``, then older rules (``created_at_unix_ms``) before newer ones, then
by id. The first matching rule therefore decides, which makes DENY win over
ALLOW among the matching rules of one class. Expired rules are skipped. No
match is a deny (closed world).

Bind rules (an OutRelay extension, ``Action.BIND``) say which agent may
*provide* a service: caller = the provider's identity, target = the service
name, method unused. They live in an index of their own, so ``decide`` (dial)
never sees a bind rule and ``decide_bind`` never sees a dial rule; within
the bind index the precedence above is the same, and no match is a deny.
"""

from __future__ import annotations

import bisect
import enum
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from outrelay.policy.glob import glob_match, has_wildcard

#: ``Decision.reason`` when no rule matches.
NO_MATCH = "no matching rule"


class Verdict(enum.IntEnum):
    """What a rule decides; numbers are the wire ``Decision`` enum."""

    ALLOW = 1
    DENY = 2


class P2PMode(enum.IntEnum):
    """Whether a stream may move to a direct path; wire ``P2PMode`` numbers."""

    ALLOWED = 0
    FORBIDDEN = 1
    REQUIRED = 2


class Action(enum.IntEnum):
    """What a rule governs; wire ``RuleAction`` numbers (OutRelay extension)."""

    #: opening a stream (the reference's only kind of rule)
    DIAL = 0
    #: registering (providing) a service
    BIND = 1


class RelayMode(enum.IntEnum):
    """How the relay carries a stream; wire ``RelayMode`` numbers."""

    SPLICE = 0
    FORWARD = 1


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule, as stored by the controller."""

    #: unique id (the controller makes a UUIDv4 when the client gives none)
    id: str
    #: tenant the rule belongs to; it only applies to that tenant's decisions
    tenant: str
    #: glob over the caller identity
    caller_pattern: str
    #: glob over the target (a service name, or a consumer URI callee-side)
    target_pattern: str
    #: glob over the method; empty matches any method
    method_pattern: str = ""
    #: ALLOW or DENY
    verdict: Verdict = Verdict.ALLOW
    #: absolute expiry in ms since the epoch; 0 never expires
    expires_unix_ms: int = 0
    #: insertion time in ms since the epoch (orders rules of one class)
    created_at_unix_ms: int = 0
    #: P2P promotion mode carried to the stream
    p2p_mode: P2PMode = P2PMode.ALLOWED
    #: relay data-plane mode carried to the stream
    relay_mode: RelayMode = RelayMode.SPLICE
    #: DIAL (open a stream) or BIND (provide a service)
    action: Action = Action.DIAL

    def expired(self, now_ms: int) -> bool:
        """True once ``now_ms`` has reached a non-zero expiry."""
        return self.expires_unix_ms > 0 and now_ms >= self.expires_unix_ms

    def matches(self, caller: str, target: str, method: str) -> bool:
        """Whether caller, target and method all match (expiry not checked).

        A bind rule ignores the method.
        """
        if (
            self.method_pattern
            and self.action is Action.DIAL
            and not glob_match(self.method_pattern, method)
        ):
            return False
        return glob_match(self.target_pattern, target) and glob_match(self.caller_pattern, caller)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one policy evaluation."""

    #: ALLOW or DENY
    verdict: Verdict
    #: id of the deciding rule; empty when no rule matched
    rule_id: str = ""
    #: the rule id, or ``NO_MATCH``
    reason: str = NO_MATCH
    #: the deciding rule's P2P mode (ALLOWED without a rule)
    p2p_mode: P2PMode = P2PMode.ALLOWED
    #: the deciding rule's relay mode (SPLICE without a rule)
    relay_mode: RelayMode = RelayMode.SPLICE

    @property
    def allowed(self) -> bool:
        """True for an ALLOW decision."""
        return self.verdict is Verdict.ALLOW


DENY_NO_MATCH = Decision(Verdict.DENY)


#: rules are indexed per (tenant, action)
_Key = tuple[str, Action]


def _order(rule: Rule) -> tuple[int, int, str]:
    return (0 if rule.verdict is Verdict.DENY else 1, rule.created_at_unix_ms, rule.id)


@dataclass(slots=True)
class _Bucket:
    """Rules sorted by ``_order``, with their keys alongside for bisect.

    Edits are copy-on-write: a reader that took ``rules`` keeps a consistent
    list while a writer (holding the engine lock) swaps in a new one.
    """

    keys: list[tuple[int, int, str]] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)

    def insert(self, rule: Rule) -> None:
        key = _order(rule)
        at = bisect.bisect_left(self.keys, key)
        keys, rules = list(self.keys), list(self.rules)
        keys.insert(at, key)
        rules.insert(at, rule)
        self.keys, self.rules = keys, rules

    def remove(self, rule: Rule) -> None:
        at = bisect.bisect_left(self.keys, _order(rule))
        self.keys = self.keys[:at] + self.keys[at + 1 :]
        self.rules = self.rules[:at] + self.rules[at + 1 :]

    def sort(self) -> None:
        self.rules.sort(key=_order)
        self.keys = [_order(rule) for rule in self.rules]

    def first_match(self, caller: str, target: str, method: str, now_ms: int) -> Rule | None:
        for rule in self.rules:
            if rule.matches(caller, target, method) and not rule.expired(now_ms):
                return rule
        return None


@dataclass(slots=True)
class _TenantRules:
    exact: dict[str, _Bucket] = field(default_factory=dict)
    #: literal prefix of the target pattern (up to the first ``*``) -> rules
    wildcard: dict[str, _Bucket] = field(default_factory=dict)
    #: distinct prefix lengths in ``wildcard``, ascending
    prefix_lengths: tuple[int, ...] = ()
    #: prefix length -> number of wildcard buckets with that length
    length_count: dict[int, int] = field(default_factory=dict)

    def count_prefix(self, length: int, delta: int) -> None:
        count = self.length_count.get(length, 0) + delta
        if count:
            self.length_count[length] = count
        else:
            del self.length_count[length]
        if count in (0, 1):  # the set of lengths changed
            self.prefix_lengths = tuple(sorted(self.length_count))

    def wildcard_match(self, caller: str, target: str, method: str, now_ms: int) -> Rule | None:
        best: Rule | None = None
        for length in self.prefix_lengths:
            if length > len(target):
                break
            bucket = self.wildcard.get(target[:length])
            if bucket is None:
                continue
            rule = bucket.first_match(caller, target, method, now_ms)
            if rule is not None and (best is None or _order(rule) < _order(best)):
                best = rule
        return best


class PolicyEngine:
    """Rules indexed for fast decisions; safe to share between threads.

    Mutations (``add``, ``remove``, ``replace_all``) take a lock; ``decide``
    reads without one because buckets are copy-on-write and the top-level
    maps are swapped as whole references. Adding to a class of n rules costs
    O(n) copying; ``replace_all`` sorts each class once.
    """

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Rule] = {}
        #: (tenant, action) -> that tenant's rules of that action
        self._tenants: dict[_Key, _TenantRules] = {}
        self.replace_all(rules)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._by_id

    def rules(self) -> list[Rule]:
        """Every rule, in no particular order."""
        return list(self._by_id.values())

    def get(self, rule_id: str) -> Rule | None:
        """The rule with that id, or None."""
        return self._by_id.get(rule_id)

    def replace_all(self, rules: Iterable[Rule]) -> None:
        """Swap in a complete rule set at once (a Watch snapshot)."""
        by_id = {rule.id: rule for rule in rules}
        tenants: dict[_Key, _TenantRules] = {}
        for rule in by_id.values():
            _bucket_of(tenants, rule).rules.append(rule)
        for per_tenant in tenants.values():
            for bucket in (*per_tenant.wildcard.values(), *per_tenant.exact.values()):
                bucket.sort()
            per_tenant.prefix_lengths = tuple(sorted(per_tenant.length_count))
        with self._lock:
            self._by_id, self._tenants = by_id, tenants

    def add(self, rule: Rule) -> None:
        """Insert ``rule``, replacing any rule with the same id (upsert)."""
        with self._lock:
            old = self._by_id.get(rule.id)
            if old is not None:
                _drop(self._tenants, old)
            self._by_id[rule.id] = rule
            _bucket_of(self._tenants, rule).insert(rule)

    def remove(self, rule_id: str) -> bool:
        """Delete the rule with that id; return whether it existed."""
        with self._lock:
            old = self._by_id.pop(rule_id, None)
            if old is None:
                return False
            _drop(self._tenants, old)
            return True

    def decide(self, tenant: str, caller: str, target: str, method: str, now_ms: int) -> Decision:
        """Evaluate one (caller, target, method) of ``tenant`` at ``now_ms``.

        Only dial rules count. Exact-target rules are consulted before
        wildcard-target rules; within a class DENY beats ALLOW, then older
        beats newer. Returns a deny with reason ``NO_MATCH`` when nothing
        matches. Never raises.
        """
        return self._decide((tenant, Action.DIAL), caller, target, method, now_ms)

    def decide_bind(self, tenant: str, provider: str, service: str, now_ms: int) -> Decision:
        """May agent ``provider`` of ``tenant`` register ``service`` at ``now_ms``?

        Only bind rules count, with the precedence of :meth:`decide`; no
        matching rule is a deny with reason ``NO_MATCH``. Never raises.
        """
        return self._decide((tenant, Action.BIND), provider, service, "", now_ms)

    def _decide(self, key: _Key, caller: str, target: str, method: str, now_ms: int) -> Decision:
        rules = self._tenants.get(key)
        if rules is None:
            return DENY_NO_MATCH
        rule = None
        bucket = rules.exact.get(target)
        if bucket is not None:
            rule = bucket.first_match(caller, target, method, now_ms)
        if rule is None:
            rule = rules.wildcard_match(caller, target, method, now_ms)
        if rule is None:
            return DENY_NO_MATCH
        return Decision(rule.verdict, rule.id, rule.id, rule.p2p_mode, rule.relay_mode)


def _bucket_of(tenants: dict[_Key, _TenantRules], rule: Rule) -> _Bucket:
    rules = tenants.get((rule.tenant, rule.action))
    if rules is None:
        rules = tenants[(rule.tenant, rule.action)] = _TenantRules()
    pattern = rule.target_pattern
    if has_wildcard(pattern):
        index, key = rules.wildcard, pattern[: pattern.index("*")]
    else:
        index, key = rules.exact, pattern
    bucket = index.get(key)
    if bucket is None:
        bucket = index[key] = _Bucket()
        if index is rules.wildcard:
            rules.count_prefix(len(key), +1)
    return bucket


def _drop(tenants: dict[_Key, _TenantRules], rule: Rule) -> None:
    """Remove ``rule`` from its bucket, and the bucket once it is empty."""
    bucket = _bucket_of(tenants, rule)
    bucket.remove(rule)
    if bucket.rules:
        return
    rules = tenants[(rule.tenant, rule.action)]
    pattern = rule.target_pattern
    if has_wildcard(pattern):
        key = pattern[: pattern.index("*")]
        del rules.wildcard[key]
        rules.count_prefix(len(key), -1)
    else:
        del rules.exact[pattern]


def combine_p2p(caller_side: P2PMode, callee_side: P2PMode) -> P2PMode:
    """Effective P2P mode of a stream: FORBIDDEN > REQUIRED > ALLOWED (§6.4)."""
    for mode in (P2PMode.FORBIDDEN, P2PMode.REQUIRED):
        if mode in (caller_side, callee_side):
            return mode
    return P2PMode.ALLOWED
