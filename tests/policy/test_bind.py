"""Bind rules in the engine: a world of their own, with the dial precedence."""

from __future__ import annotations

from outrelay.policy import NO_MATCH, Action, PolicyEngine, Rule, Verdict
from outrelay.policy.bind import check_bind
from outrelay.policy.convert import rule_from_proto, rule_to_proto
from outrelay.proto import policy_pb2

P = "outrelay://acme/agent/11111111-1111-4111-8111-111111111111"
Q = "outrelay://acme/agent/22222222-2222-4222-8222-222222222222"


def bind(rule_id: str, caller: str, target: str, **kw: object) -> Rule:
    return Rule(rule_id, "acme", caller, target, action=Action.BIND, **kw)  # type: ignore[arg-type]


def test_dial_rules_never_grant_bind() -> None:
    engine = PolicyEngine([Rule("allow-all", "acme", "*", "*")])
    assert engine.decide("acme", P, "web", "", 0).allowed
    d = engine.decide_bind("acme", P, "web", 0)
    assert not d.allowed and d.reason == NO_MATCH


def test_bind_rules_never_grant_dial() -> None:
    engine = PolicyEngine([bind("bind-all", "*", "*")])
    assert engine.decide_bind("acme", P, "web", 0).allowed
    assert not engine.decide("acme", P, "web", "", 0).allowed


def test_bind_is_closed_world_per_tenant() -> None:
    engine = PolicyEngine([bind("b", P, "web")])
    assert engine.decide_bind("acme", P, "web", 0).rule_id == "b"
    assert not engine.decide_bind("acme", Q, "web", 0).allowed  # other agent
    assert not engine.decide_bind("acme", P, "db", 0).allowed  # other service
    assert not engine.decide_bind("globex", P, "web", 0).allowed  # other tenant


def test_bind_precedence_deny_first_then_older_then_exact_before_wildcard() -> None:
    engine = PolicyEngine(
        [
            bind("allow-old", P, "web", created_at_unix_ms=1),
            bind("deny-new", "outrelay://acme/agent/*", "web", verdict=Verdict.DENY,
                 created_at_unix_ms=2),
            bind("wild-allow", "*", "web-*", created_at_unix_ms=0),
            bind("wild-deny", Q, "web-*", verdict=Verdict.DENY, created_at_unix_ms=5),
        ]
    )  # fmt: skip
    # within the exact class DENY beats ALLOW whatever the age
    assert engine.decide_bind("acme", P, "web", 0).rule_id == "deny-new"
    # wildcard class: DENY for Q, the ALLOW for others
    assert engine.decide_bind("acme", Q, "web-1", 0).rule_id == "wild-deny"
    assert engine.decide_bind("acme", P, "web-1", 0).rule_id == "wild-allow"
    # an exact rule that matches is preferred to any wildcard rule
    engine.add(bind("exact-allow", Q, "web-2", created_at_unix_ms=9))
    assert engine.decide_bind("acme", Q, "web-2", 0).rule_id == "exact-allow"


def test_bind_ignores_method_and_skips_expired() -> None:
    engine = PolicyEngine(
        [bind("m", P, "web", method_pattern="GET"), bind("gone", Q, "web", expires_unix_ms=10)]
    )
    assert engine.decide_bind("acme", P, "web", 0).allowed
    assert engine.decide_bind("acme", Q, "web", 9).allowed
    assert not engine.decide_bind("acme", Q, "web", 10).allowed


def test_remove_and_upsert_keep_the_worlds_apart() -> None:
    engine = PolicyEngine([bind("r", P, "web")])
    engine.add(Rule("r", "acme", P, "web"))  # same id, now a dial rule
    assert not engine.decide_bind("acme", P, "web", 0).allowed
    assert engine.decide("acme", P, "web", "", 0).allowed
    assert engine.remove("r") and len(engine) == 0
    assert not engine.decide("acme", P, "web", "", 0).allowed


def test_check_bind_reason() -> None:
    engine = PolicyEngine([bind("no", Q, "web", verdict=Verdict.DENY)])
    assert check_bind(engine, "acme", P, "web", 0) == (
        f"bind denied: {P} may not provide 'web' (no bind rule allows it)"
    )
    assert check_bind(engine, "acme", Q, "web", 0).endswith("(bind rule no)")
    engine.add(bind("yes", P, "web"))
    assert check_bind(engine, "acme", P, "web", 0) == ""


def test_wire_action_roundtrip_and_reference_default() -> None:
    rule = bind("b", P, "web")
    msg = rule_to_proto(rule)
    assert msg.action == policy_pb2.RULE_ACTION_BIND
    assert rule_from_proto(msg) == rule
    # a reference peer's rule has no action field: it is a dial rule
    ref = policy_pb2.PolicyRule(id="x", tenant="acme", caller_pattern="*", target_pattern="*")
    assert rule_from_proto(ref).action is Action.DIAL
    assert rule_from_proto(policy_pb2.PolicyRule.FromString(ref.SerializeToString())).action == 0
