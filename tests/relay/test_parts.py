"""Relay building blocks: pair table, decision cache, policy watch, provider choice."""

from __future__ import annotations

import pytest

from outrelay.observe import Registry
from outrelay.policy import PolicyEngine, Rule, Verdict
from outrelay.policy.convert import rule_to_proto
from outrelay.policy.engine import Decision
from outrelay.proto import policy_pb2, registry_pb2
from outrelay.relay.audit import AuditQueue, audit_event
from outrelay.relay.cache import DecisionCache
from outrelay.relay.errors import (
    BadGateway,
    Collision,
    ControllerError,
    Denied,
    NotFound,
    Unavailable,
    register_refusal,
    reject_frame,
)
from outrelay.relay.pairs import PairTable
from outrelay.relay.policy_watch import ADDED, REMOVED, SNAPSHOT_END, PolicyWatcher
from outrelay.relay.registry import LocalAgents, ProviderChooser


def test_pairs_reject_different_pair() -> None:  # A11
    t = PairTable()
    assert t.record(0xFEED, "c1", "p1")
    assert t.record(0xFEED, "c1", "p1")
    assert not t.record(0xFEED, "c2", "p2")
    pair = t.get(0xFEED)
    assert pair is not None and (pair.consumer, pair.provider) == ("c1", "p1")
    t.forget(0xFEED)
    assert t.get(0xFEED) is not None  # the second recording still holds it
    t.forget(0xFEED)
    assert t.record(0xFEED, "c2", "p2")


def test_pairs_zero_is_noop() -> None:  # A12
    t = PairTable()
    assert t.record(0, "c1", "p1") and t.record(0, "c2", "p2")
    assert t.get(0) is None and len(t) == 0


def test_pair_peer_of() -> None:
    t = PairTable()
    t.record(1, "c", "p")
    pair = t.get(1)
    assert pair is not None
    assert (pair.peer_of("c"), pair.peer_of("p"), pair.peer_of("x")) == ("p", "c", None)


def test_cache_put_get_flush_expiry() -> None:  # A35, A36
    c: DecisionCache[str] = DecisionCache(ttl=5.0)
    c.put(("c", "t", "m"), "allow", now=0.0)
    assert c.get(("c", "t", "m"), now=4.9) == "allow"
    assert c.get(("c", "t", "m"), now=5.0) is None
    assert len(c) == 0
    c.put(("c", "t", "m"), "allow", now=0.0)
    c.flush()
    assert c.get(("c", "t", "m"), now=0.0) is None


def test_cache_soft_cap() -> None:
    c: DecisionCache[int] = DecisionCache(ttl=5.0, cap=10, evict=4)
    for i in range(5):
        c.put((str(i), "", ""), i, now=0.0)
    for i in range(5, 10):
        c.put((str(i), "", ""), i, now=4.0)
    c.put(("new", "", ""), 0, now=5.0)  # purges the 5 expired ones
    assert len(c) == 6
    for i in range(4):
        c.put((f"more{i}", "", ""), 0, now=5.0)
    c.put(("last", "", ""), 0, now=5.0)  # still full: evicts 4 oldest
    assert len(c) == 7 and c.get(("last", "", ""), now=5.0) == 0


def _ev(kind: int, rule: Rule | None = None, removed: str = "") -> policy_pb2.PolicyEvent:
    ev = policy_pb2.PolicyEvent(kind=kind, removed_id=removed)  # type: ignore[arg-type]
    if rule is not None:
        ev.rule.CopyFrom(rule_to_proto(rule))
    return ev


def test_policy_watch_snapshot_then_live() -> None:
    engine = PolicyEngine()
    flushes: list[int] = []
    watcher = PolicyWatcher(["acme"], engine, lambda: flushes.append(1))
    w = watcher.tenants["acme"]
    w.subscribed()
    assert not w.apply(_ev(ADDED, Rule("r1", "acme", "*", "svc")))
    assert len(engine) == 0  # buffered until SNAPSHOT_END
    w.apply(_ev(ADDED, Rule("r2", "acme", "*", "svc2")))
    assert w.apply(_ev(REMOVED, removed="r2"))  # applied at once, even in the snapshot
    assert not watcher.synced
    assert w.apply(_ev(SNAPSHOT_END))
    assert watcher.synced and engine.rules()[0].id == "r1" and len(engine) == 1
    assert w.apply(_ev(ADDED, Rule("r3", "acme", "*", "svc3")))
    assert len(engine) == 2
    assert w.apply(_ev(REMOVED, removed="r1"))
    assert [r.id for r in engine.rules()] == ["r3"]
    assert not w.apply(_ev(ADDED))  # no rule: ignored
    assert not w.apply(_ev(REMOVED))  # no id: ignored
    assert len(flushes) == 4


def test_policy_watch_resubscribe_replaces_only_that_tenant() -> None:
    engine = PolicyEngine([Rule("b1", "beta", "*", "x")])
    watcher = PolicyWatcher(["acme", "beta"], engine, lambda: None)
    acme = watcher.tenants["acme"]
    acme.subscribed()
    acme.apply(_ev(ADDED, Rule("old", "acme", "*", "svc")))
    acme.apply(_ev(SNAPSHOT_END))
    acme.subscribed()  # the stream broke and came back
    acme.apply(_ev(ADDED, Rule("new", "acme", "*", "svc")))
    assert {r.id for r in engine.rules()} == {"b1", "old"}  # kept while resyncing
    acme.apply(_ev(SNAPSHOT_END))
    assert {r.id for r in engine.rules()} == {"b1", "new"}
    assert engine.decide("acme", "c", "svc", "", 0).verdict is Verdict.ALLOW


def test_chooser_local_first_round_robin_remote_and_stale() -> None:
    agents = LocalAgents()
    agents.add("a1", 1)
    agents.add("a2", 2)
    chooser = ProviderChooser("me", agents)
    remote = registry_pb2.Provider(agent_uri="r", relay_id="other")
    stale = registry_pb2.Provider(agent_uri="gone", relay_id="me")
    local = [registry_pb2.Provider(agent_uri=u, relay_id="me") for u in ("a1", "a2")]
    picks = [chooser.choose("t", "s", [remote, stale, *local]).conn for _ in range(4)]
    assert picks == [1, 2, 1, 2]
    assert chooser.choose("t", "s", [stale, remote]).remote
    with pytest.raises(NotFound):
        chooser.choose("t", "s", [stale])
    with pytest.raises(NotFound):
        chooser.choose("t", "s", [])


def test_local_agents_newer_connection_wins() -> None:
    agents = LocalAgents()
    assert agents.add("u", 1) == []
    assert agents.add("u", 2) == []
    assert not agents.remove("u", 1)
    assert agents.get("u") == 2
    assert agents.remove("u", 2) and "u" not in agents


def test_local_agents_registrations_owned_by_session() -> None:
    agents = LocalAgents()
    agents.add("u", 1)
    agents.provide("t", "s", "u", 1)
    agents.add("u", 2)
    assert agents.providers("t", "s") == [("u", 1)]
    assert not agents.remove("u", 2)  # the newer session ends: the older keeps its own
    assert agents.providers("t", "s") == [("u", 1)] and agents.get("u") == 1
    agents.add("u", 3)
    agents.provide("t", "s", "u", 3)
    assert agents.providers("t", "s") == [("u", 3)]  # one entry, the newest session
    assert not agents.remove("u", 3)
    assert agents.providers("t", "s") == [("u", 1)]


def test_errors_carry_codes() -> None:
    assert [e.code for e in (Denied(), NotFound(), Collision(), BadGateway(), Unavailable())] == [
        403,
        404,
        409,
        502,
        503,
    ]
    assert NotFound().reason == "service not found"
    assert register_refusal(ControllerError("x", status="INVALID_ARGUMENT")).code == 403
    assert register_refusal(ControllerError("x", status="UNAVAILABLE")).code == 503
    raw = reject_frame(Collision())
    assert raw[8:] == b"\x08\x99\x03\x12\x13stream id collision"


def test_audit_queue_bounded() -> None:
    reg = Registry()
    q = AuditQueue(2, registry=reg)
    ev = audit_event("outrelay://acme/agent/x", "svc", "", Decision(Verdict.DENY), 5)
    assert ev.tenant == "" and ev.decision == policy_pb2.DECISION_DENY
    assert q.put(ev) and q.put(ev) and not q.put(ev)
    assert reg.counter("audit_dropped").value == 1
    assert len(q.take(1)) == 1 and len(q.take()) == 1 and q.take() == []


def test_audit_requeue_keeps_order_and_bound() -> None:
    reg = Registry()
    q = AuditQueue(3, registry=reg)
    evs = [audit_event(f"c{i}", "svc", "", Decision(Verdict.ALLOW), i) for i in range(4)]
    q.put(evs[2])
    q.put(evs[3])
    q.requeue([evs[0], evs[1]])  # a failed batch goes back in front; one too many
    assert [e.caller for e in q.take()] == ["c1", "c2", "c3"]
    assert reg.counter("audit_dropped").value == 1


def test_resolve_cache_ttl() -> None:
    from outrelay.relay.cache import ResolveCache

    cache: ResolveCache[list[str]] = ResolveCache(ttl=30.0)
    cache.put(("t", "s"), ["p"], 100.0)
    assert cache.stale(("t", "s"), 130.0) == ["p"]
    assert cache.stale(("t", "s"), 130.5) is None and len(cache) == 0
