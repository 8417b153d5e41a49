"""Map ``Rule`` to and from the ``outrelay.control.v1.PolicyRule`` message.

Unknown enum numbers are normalised the way the reference stores them
(control.md §4.3): any non-DENY decision is ALLOW, unknown P2P modes are
ALLOWED, unknown relay modes are SPLICE. The OutRelay ``action`` field
(absent, 0, in a reference rule) is DIAL unless it says BIND; an unknown
action number is DIAL too, and a dial rule never grants a registration.
"""

from __future__ import annotations

from typing import Any

from outrelay.policy.engine import Action, P2PMode, RelayMode, Rule, Verdict
from outrelay.proto import policy_pb2


def verdict_of(number: int) -> Verdict:
    """The verdict for a wire ``Decision`` number (non-DENY is ALLOW)."""
    return Verdict.DENY if number == Verdict.DENY else Verdict.ALLOW


def p2p_of(number: int) -> P2PMode:
    """The P2P mode for a wire number (unknown numbers are ALLOWED)."""
    try:
        return P2PMode(number)
    except ValueError:
        return P2PMode.ALLOWED


def relay_mode_of(number: int) -> RelayMode:
    """The relay mode for a wire number (unknown numbers are SPLICE)."""
    return RelayMode.FORWARD if number == RelayMode.FORWARD else RelayMode.SPLICE


def action_of(number: int) -> Action:
    """The rule action for a wire number (unknown numbers are DIAL)."""
    return Action.BIND if number == Action.BIND else Action.DIAL


def rule_from_proto(msg: policy_pb2.PolicyRule) -> Rule:
    """Build a ``Rule`` from a ``PolicyRule`` message (never raises)."""
    return Rule(
        id=msg.id,
        tenant=msg.tenant,
        caller_pattern=msg.caller_pattern,
        target_pattern=msg.target_pattern,
        method_pattern=msg.method_pattern,
        verdict=verdict_of(msg.decision),
        expires_unix_ms=msg.expires_unix_ms,
        created_at_unix_ms=msg.created_at_unix_ms,
        p2p_mode=p2p_of(msg.p2p_mode),
        relay_mode=relay_mode_of(msg.relay_mode),
        action=action_of(msg.action),
    )


def rule_to_proto(rule: Rule) -> policy_pb2.PolicyRule:
    """The ``PolicyRule`` message for ``rule``."""
    # the generated stubs type enum fields as their wrapper class, not int
    fields: dict[str, Any] = dict(
        id=rule.id,
        tenant=rule.tenant,
        caller_pattern=rule.caller_pattern,
        target_pattern=rule.target_pattern,
        method_pattern=rule.method_pattern,
        decision=int(rule.verdict),
        expires_unix_ms=rule.expires_unix_ms,
        created_at_unix_ms=rule.created_at_unix_ms,
        p2p_mode=int(rule.p2p_mode),
        relay_mode=int(rule.relay_mode),
        action=int(rule.action),
    )
    return policy_pb2.PolicyRule(**fields)
