from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from outrelay.policy import (
    NO_MATCH,
    P2PMode,
    PolicyEngine,
    RelayMode,
    Rule,
    Verdict,
    combine_p2p,
)
from outrelay.policy.convert import rule_from_proto, rule_to_proto
from outrelay.proto import policy_pb2

T = "acme"
ALICE = "outrelay://acme/agent/00000000-0000-0000-0000-000000000001"
BOB = "outrelay://acme/agent/00000000-0000-0000-0000-000000000002"


def rule(
    rid: str, caller: str, target: str, verdict: Verdict = Verdict.ALLOW, **kw: object
) -> Rule:
    return Rule(
        id=rid,
        tenant=kw.pop("tenant", T),
        caller_pattern=caller,  # type: ignore[arg-type]
        target_pattern=target,
        verdict=verdict,
        **kw,
    )  # type: ignore[arg-type]


def test_no_rules_is_deny() -> None:
    d = PolicyEngine().decide(T, ALICE, "svc", "", 0)
    assert d.verdict is Verdict.DENY and d.reason == NO_MATCH and d.rule_id == ""
    assert not d.allowed


def test_exact_target_beats_wildcard_regardless_of_decision() -> None:
    eng = PolicyEngine(
        [
            rule("all", "*", "*", Verdict.DENY),
            rule("specific", ALICE, "svc", Verdict.ALLOW),
        ]
    )
    d = eng.decide(T, ALICE, "svc", "", 0)
    assert d.allowed and d.rule_id == "specific"
    # and the other way round: the reference's assertion 07
    eng = PolicyEngine(
        [
            rule("all", "*", "*", Verdict.ALLOW),
            rule("block", BOB, "svc-nat", Verdict.DENY),
        ]
    )
    assert eng.decide(T, BOB, "svc-nat", "", 0).rule_id == "block"
    assert eng.decide(T, ALICE, "svc-nat", "", 0).rule_id == "all"


def test_deny_wins_within_a_class() -> None:
    for rules in (
        [
            rule("a", "*", "svc", Verdict.ALLOW, created_at_unix_ms=1),
            rule("d", ALICE, "svc", Verdict.DENY, created_at_unix_ms=2),
        ],
        [
            rule("a", "*", "s*", Verdict.ALLOW, created_at_unix_ms=1),
            rule("d", "*", "*", Verdict.DENY, created_at_unix_ms=2),
        ],
    ):
        eng = PolicyEngine(rules)
        d = eng.decide(T, ALICE, "svc", "", 0)
        assert d.verdict is Verdict.DENY and d.reason == "d"


def test_oldest_wins_among_same_verdict() -> None:
    eng = PolicyEngine()
    eng.add(rule("new", "*", "svc", created_at_unix_ms=20, p2p_mode=P2PMode.REQUIRED))
    eng.add(rule("old", "*", "svc", created_at_unix_ms=10, relay_mode=RelayMode.FORWARD))
    d = eng.decide(T, ALICE, "svc", "", 0)
    assert d.rule_id == "old" and d.relay_mode is RelayMode.FORWARD
    assert d.p2p_mode is P2PMode.ALLOWED
    assert eng.remove("old") and not eng.remove("old")
    d = eng.decide(T, ALICE, "svc", "", 0)
    assert d.rule_id == "new" and d.p2p_mode is P2PMode.REQUIRED


def test_expired_rules_are_ignored() -> None:
    eng = PolicyEngine(
        [
            rule("deny-temp", "*", "svc", Verdict.DENY, expires_unix_ms=1000),
            rule("allow", "*", "svc", Verdict.ALLOW),
        ]
    )
    assert eng.decide(T, ALICE, "svc", "", 999).rule_id == "deny-temp"
    assert eng.decide(T, ALICE, "svc", "", 1000).rule_id == "allow"


def test_method_and_tenant_scoping() -> None:
    eng = PolicyEngine(
        [
            rule("get", "*", "svc", method_pattern="GET /*"),
            rule("other", "*", "svc", tenant="other"),
        ]
    )
    assert eng.decide(T, ALICE, "svc", "GET /x", 0).allowed
    assert not eng.decide(T, ALICE, "svc", "POST /x", 0).allowed
    assert not eng.decide(T, ALICE, "svc", "", 0).allowed
    assert not eng.decide("nobody", ALICE, "svc", "", 0).allowed
    assert eng.decide("other", ALICE, "svc", "", 0).rule_id == "other"


def test_add_is_upsert_and_moves_between_classes() -> None:
    eng = PolicyEngine([rule("r", "*", "svc", Verdict.DENY)])
    eng.add(rule("r", "*", "x-*", Verdict.ALLOW))
    assert len(eng) == 1
    assert eng.decide(T, ALICE, "svc", "", 0).reason == NO_MATCH
    assert eng.decide(T, ALICE, "x-1", "", 0).rule_id == "r"


def test_replace_all_last_duplicate_wins() -> None:
    eng = PolicyEngine([rule("old", "*", "*")])
    eng.replace_all([rule("r", "*", "a"), rule("r", "*", "b")])
    assert "old" not in eng and len(eng) == 1
    assert eng.decide(T, ALICE, "b", "", 0).allowed
    assert not eng.decide(T, ALICE, "a", "", 0).allowed


def test_exact_lookup_does_not_scan_other_targets() -> None:
    many = [rule(f"r{i}", "*", f"svc-{i}") for i in range(20_000)]
    eng = PolicyEngine(many)
    start = time.perf_counter()
    for _ in range(1000):
        assert eng.decide(T, ALICE, "svc-19999", "", 0).rule_id == "r19999"
    assert time.perf_counter() - start < 0.5


def test_combine_p2p() -> None:
    A, F, R = P2PMode.ALLOWED, P2PMode.FORBIDDEN, P2PMode.REQUIRED
    assert combine_p2p(A, A) is A
    assert combine_p2p(A, R) is R and combine_p2p(R, A) is R
    assert combine_p2p(R, F) is F and combine_p2p(F, A) is F


def test_proto_round_trip_normalises() -> None:
    r = rule(
        "x",
        "*",
        "svc",
        Verdict.DENY,
        method_pattern="m",
        expires_unix_ms=5,
        created_at_unix_ms=3,
        p2p_mode=P2PMode.FORBIDDEN,
        relay_mode=RelayMode.FORWARD,
    )
    assert rule_from_proto(rule_to_proto(r)) == r
    odd = policy_pb2.PolicyRule(id="o", tenant=T, caller_pattern="*", target_pattern="*")
    odd.decision = 7  # type: ignore[assignment]
    odd.p2p_mode = 9  # type: ignore[assignment]
    odd.relay_mode = 4  # type: ignore[assignment]
    got = rule_from_proto(odd)
    assert got.verdict is Verdict.ALLOW and got.p2p_mode is P2PMode.ALLOWED
    assert got.relay_mode is RelayMode.SPLICE


def _reference(rules: list[Rule], tenant: str, caller: str, target: str, now: int) -> str:
    """Brute force: every live match, exact class first, then DENY, age, id."""
    live = [
        r
        for r in rules
        if r.tenant == tenant and r.matches(caller, target, "") and not r.expired(now)
    ]
    if not live:
        return NO_MATCH
    best = min(
        live,
        key=lambda r: (
            "*" in r.target_pattern,
            r.verdict is not Verdict.DENY,
            r.created_at_unix_ms,
            r.id,
        ),
    )
    return best.id


_pat = st.text(alphabet="ab*", min_size=1, max_size=4)
_rule_st = st.builds(
    Rule,
    id=st.sampled_from([f"r{i}" for i in range(8)]),
    tenant=st.sampled_from(["t1", "t2"]),
    caller_pattern=_pat,
    target_pattern=_pat,
    verdict=st.sampled_from(list(Verdict)),
    expires_unix_ms=st.sampled_from([0, 5, 10]),
    created_at_unix_ms=st.integers(0, 3),
)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(st.one_of(_rule_st, st.sampled_from([f"r{i}" for i in range(8)])), max_size=25),
    caller=st.text(alphabet="ab", max_size=3),
    target=st.text(alphabet="ab", max_size=3),
    now=st.sampled_from([0, 7, 12]),
)
def test_engine_agrees_with_brute_force(
    ops: list[object], caller: str, target: str, now: int
) -> None:
    eng = PolicyEngine()
    current: dict[str, Rule] = {}
    for op in ops:
        if isinstance(op, Rule):
            eng.add(op)
            current[op.id] = op
        else:
            assert eng.remove(op) is (current.pop(op, None) is not None)  # type: ignore[arg-type]
    for tenant in ("t1", "t2"):
        want = _reference(list(current.values()), tenant, caller, target, now)
        assert eng.decide(tenant, caller, target, "", now).reason == want
        assert PolicyEngine(current.values()).decide(tenant, caller, target, "", now).reason == want
