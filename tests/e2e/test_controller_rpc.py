"""The controller as a real process, over mTLS, through the generated stubs."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.identity import Identity
from outrelay.pki.csr import make_csr
from outrelay.policy import PolicyEngine, Verdict
from outrelay.policy.convert import rule_from_proto
from outrelay.proto import audit_pb2 as ap
from outrelay.proto import audit_pb2_grpc as ag
from outrelay.proto import enrollment_pb2 as ep
from outrelay.proto import enrollment_pb2_grpc as eg
from outrelay.proto import policy_pb2 as pp
from outrelay.proto import policy_pb2_grpc as pg
from outrelay.proto import registry_pb2 as rp
from outrelay.proto import registry_pb2_grpc as rg

from .conftest import debug_metrics, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

T = "acme"
C = grpc.StatusCode
HEARTBEAT_S = 0.5  # a relay is stale after 1.5 s without UpsertRelay


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    work = tmp_path_factory.mktemp("ctl")
    pki = dev_pki(work / "pki")
    proc = ControllerProcess(
        work,
        pki,
        args=[
            "--ca-key",
            str(pki / "ca.key"),
            "--relay-heartbeat",
            f"{HEARTBEAT_S}s",
            "--log-level",
            "debug",
        ],
    )
    try:
        proc.start()
        # registrations below need a bind rule (closed world); any agent of these tenants
        for tenant in (T, "globex", "lists", "lists-other", "slowtest"):
            proc.allow_bind("*", "*", tenant=tenant)
        yield proc
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def admin(ctl: ControllerProcess) -> Iterator[grpc.Channel]:
    with ctl.channel("admin") as ch:
        yield ch


@pytest.fixture(scope="module")
def relay(ctl: ControllerProcess) -> Iterator[grpc.Channel]:
    """Relay ``outrelay://acme/relay/r1`` of the dev bundle."""
    with ctl.channel("relay") as ch:
        yield ch


@pytest.fixture(scope="module")
def as_(ctl: ControllerProcess) -> Iterator[Callable[[str], grpc.Channel]]:
    """A channel per identity URI (leaf issued by the test CA), closed at the end."""
    channels: dict[str, grpc.Channel] = {}

    def get(uri: str) -> grpc.Channel:
        if uri not in channels:
            channels[uri] = ctl.channel(uri)
        return channels[uri]

    yield get
    for ch in channels.values():
        ch.close()


@pytest.fixture(scope="module")
def admin_of(as_: Callable[[str], grpc.Channel]) -> Callable[[str], grpc.Channel]:
    """An operator channel of ``tenant`` (admins may only act on their own tenant)."""
    return lambda tenant: as_(f"outrelay://{tenant}/admin/ops")


@pytest.fixture(scope="module")
def relay_as(as_: Callable[[str], grpc.Channel]) -> Callable[[str], grpc.Channel]:
    """A relay channel for relay id ``rid`` (region ``eu``; relays may only name their own id)."""
    return lambda rid: as_(f"outrelay://eu/relay/{rid}")


def code_of(fn: Any, *args: Any) -> grpc.StatusCode:
    try:
        fn(*args, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return C.OK


def rule(**kw: Any) -> pp.PolicyRule:
    base: dict[str, Any] = dict(tenant=T, caller_pattern="*", target_pattern="*", decision=1)
    base.update(kw)
    return pp.PolicyRule(**base)


# -- registry -------------------------------------------------------------


def test_registry_multi_provider_region_order(
    relay: grpc.Channel, relay_as: Callable[[str], grpc.Channel]
) -> None:
    reg = rg.RegistryStub(relay)

    def reg_of(rid: str) -> rg.RegistryStub:
        return rg.RegistryStub(relay_as(rid))

    reg_of("eu-1").UpsertRelay(
        rp.UpsertRelayRequest(id="eu-1", region="eu", endpoint="eu:7443"), timeout=5
    )
    reg_of("us-1").UpsertRelay(
        rp.UpsertRelayRequest(id="us-1", region="us", endpoint="us:7443"), timeout=5
    )
    for agent, relay_id in (("a1", "eu-1"), ("a2", "us-1"), ("a3", "eu-1")):
        resp = reg_of(relay_id).RegisterService(
            rp.RegisterServiceRequest(
                tenant=T, service_name="multi", agent_uri=agent, relay_id=relay_id
            ),
            timeout=5,
        )
        assert resp.service_id == "acme/multi"
        time.sleep(0.002)  # distinct registration times
    got = reg.Resolve(
        rp.ResolveRequest(tenant=T, service_name="multi", caller_region="eu"), timeout=5
    )
    assert [p.agent_uri for p in got.providers] == ["a3", "a1", "a2"]
    assert got.providers[0].relay_endpoint == "eu:7443"
    got = reg.Resolve(
        rp.ResolveRequest(tenant=T, service_name="multi", caller_region="us"), timeout=5
    )
    assert [p.agent_uri for p in got.providers] == ["a2", "a3", "a1"]
    # deregistering one agent leaves the others
    reg_of("eu-1").DeregisterAgent(
        rp.DeregisterAgentRequest(tenant=T, agent_uri="a3", relay_id="eu-1"), timeout=5
    )
    got = reg.Resolve(rp.ResolveRequest(tenant=T, service_name="multi"), timeout=5)
    assert [p.agent_uri for p in got.providers] == ["a2", "a1"]
    empty = reg.Resolve(rp.ResolveRequest(tenant=T, service_name="nothing"), timeout=5)
    assert list(empty.providers) == []


def test_stale_relay_providers_are_left_out(
    relay: grpc.Channel, relay_as: Callable[[str], grpc.Channel]
) -> None:
    reg = rg.RegistryStub(relay)
    live, dying = rg.RegistryStub(relay_as("live")), rg.RegistryStub(relay_as("dying"))
    for rid, stub in (("live", live), ("dying", dying)):
        stub.UpsertRelay(rp.UpsertRelayRequest(id=rid, region="eu", endpoint=f"{rid}:1"), timeout=5)
        stub.RegisterService(
            rp.RegisterServiceRequest(
                tenant=T, service_name="stale", agent_uri=f"agent-{rid}", relay_id=rid
            ),
            timeout=5,
        )
    deadline = time.monotonic() + 10 * HEARTBEAT_S * 3
    seen: list[str] = []
    while time.monotonic() < deadline:
        live.UpsertRelay(
            rp.UpsertRelayRequest(id="live", region="eu", endpoint="live:1"), timeout=5
        )
        got = reg.Resolve(rp.ResolveRequest(tenant=T, service_name="stale"), timeout=5)
        seen = [p.agent_uri for p in got.providers]
        if seen == ["agent-live"]:
            break
        time.sleep(0.1)
    assert seen == ["agent-live"]
    # a heartbeat brings the relay's providers back
    dying.UpsertRelay(rp.UpsertRelayRequest(id="dying", region="eu", endpoint="dying:1"), timeout=5)
    got = reg.Resolve(rp.ResolveRequest(tenant=T, service_name="stale"), timeout=5)
    assert len(got.providers) == 2


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        (
            "RegisterService",
            rp.RegisterServiceRequest(service_name="s", agent_uri="a", relay_id="r1"),
            "tenant",
        ),
        (
            "RegisterService",
            rp.RegisterServiceRequest(
                tenant="Bad Tenant", service_name="s", agent_uri="a", relay_id="r1"
            ),
            "tenant",
        ),
        (
            "RegisterService",
            rp.RegisterServiceRequest(tenant=T, agent_uri="a", relay_id="r1"),
            "service_name",
        ),
        (
            "RegisterService",
            rp.RegisterServiceRequest(tenant=T, service_name="s", relay_id="r1"),
            "agent_uri",
        ),
        (
            "RegisterService",
            rp.RegisterServiceRequest(tenant=T, service_name="s", agent_uri="a"),
            "relay_id",
        ),
        ("DeregisterAgent", rp.DeregisterAgentRequest(agent_uri="a", relay_id="r1"), "tenant"),
        ("DeregisterAgent", rp.DeregisterAgentRequest(tenant=T, relay_id="r1"), "agent_uri"),
        ("DeregisterAgent", rp.DeregisterAgentRequest(tenant=T, agent_uri="a"), "relay_id"),
        ("Resolve", rp.ResolveRequest(service_name="s"), "tenant"),
        ("Resolve", rp.ResolveRequest(tenant=T), "service_name"),
        ("UpsertRelay", rp.UpsertRelayRequest(endpoint="e"), "id"),
        ("UpsertRelay", rp.UpsertRelayRequest(id="r1"), "endpoint"),
    ],
)
def test_registry_bad_input(relay: grpc.Channel, method: str, request_: Any, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(rg.RegistryStub(relay), method)(request_, timeout=5)
    assert err.value.code() == C.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


def test_registry_watch_requires_tenant(relay: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(rg.RegistryStub(relay).Watch(rp.WatchRequest(), timeout=5))
    assert err.value.code() == C.INVALID_ARGUMENT


def test_list_services_and_relays(
    admin_of: Callable[[str], grpc.Channel], relay_as: Callable[[str], grpc.Channel]
) -> None:
    tenant = "lists"
    fresh, old = rg.RegistryStub(relay_as("list-fresh")), rg.RegistryStub(relay_as("list-old"))
    old.UpsertRelay(rp.UpsertRelayRequest(id="list-old", endpoint="old:1"), timeout=5)
    for name, agent, stub, rid in (
        ("web", "w2", old, "list-old"),
        ("web", "w1", fresh, "list-fresh"),
        ("db", "d1", fresh, "list-fresh"),
    ):
        stub.RegisterService(
            rp.RegisterServiceRequest(
                tenant=tenant, service_name=name, agent_uri=agent, relay_id=rid, local_addr="l"
            ),
            timeout=5,
        )
    rg.RegistryStub(relay_as("list-fresh")).RegisterService(
        rp.RegisterServiceRequest(
            tenant="lists-other", service_name="x", agent_uri="x", relay_id="list-fresh"
        ),
        timeout=5,
    )
    reg = rg.RegistryStub(admin_of(tenant))

    def old_is_stale() -> bool:
        relays = reg.ListRelays(rp.ListRelaysRequest(), timeout=5).relays
        return any(r.id == "list-old" and not r.live for r in relays)

    wait_for(old_is_stale, 10 * HEARTBEAT_S * 3, "list-old going stale", interval=0.05)
    fresh.UpsertRelay(
        rp.UpsertRelayRequest(id="list-fresh", region="eu", endpoint="fresh:1"), timeout=5
    )
    got = reg.ListServices(rp.ListServicesRequest(), timeout=5).services  # empty: own tenant
    assert [(s.service_name, s.service_id) for s in got] == [
        ("db", "lists/db"),
        ("web", "lists/web"),
    ]
    assert all(s.created_at_unix_ms > 0 for s in got)
    web = {p.provider.agent_uri: p for p in got[1].providers}
    assert list(web) == ["w1", "w2"]
    w1, w2 = web["w1"], web["w2"]
    assert (w1.provider.relay_id, w1.relay_region, w1.provider.relay_endpoint, w1.live) == (
        "list-fresh",
        "eu",
        "fresh:1",
        True,
    )
    assert (w2.provider.relay_id, w2.relay_region, w2.live) == ("list-old", "", False)
    assert w2.relay_last_heartbeat_unix_ms > 0 and w2.agent_last_seen_unix_ms > 0
    assert w1.provider.service_id == "lists/web" and w1.provider.local_addr == "l"
    # Resolve agrees on liveness
    resolved = reg.Resolve(rp.ResolveRequest(service_name="web"), timeout=5).providers
    assert [p.agent_uri for p in resolved] == ["w1"]
    assert reg.ListServices(rp.ListServicesRequest(tenant=tenant), timeout=5).services == got
    # relays are not per tenant: any operator sees all of them
    relays = {
        r.id: r
        for r in rg.RegistryStub(admin_of("someone"))
        .ListRelays(rp.ListRelaysRequest(), timeout=5)
        .relays
    }
    ids = list(relays)
    assert ids == sorted(ids) and {"list-fresh", "list-old"} <= set(ids)
    assert (relays["list-fresh"].region, relays["list-fresh"].endpoint) == ("eu", "fresh:1")
    assert relays["list-fresh"].live and not relays["list-old"].live
    assert relays["list-old"].last_heartbeat_unix_ms < relays["list-fresh"].last_heartbeat_unix_ms


def test_slow_watcher_is_cut_off_others_unharmed(
    ctl: ControllerProcess, relay: grpc.Channel
) -> None:
    reg = rg.RegistryStub(relay)
    tenant = "slowtest"
    watchers = debug_metrics(ctl)["gauges"].get("registry_watchers", 0)
    # no BDP probing: the unread stream's flow-control window stays small
    slow_ch = ctl.channel("relay", grpc__http2__bdp_probe=0)
    slow = rg.RegistryStub(slow_ch).Watch(rp.WatchRequest(tenant=tenant), timeout=60)
    fast_events: list[str] = []
    fast_done = threading.Event()
    fast = reg.Watch(rp.WatchRequest(tenant=tenant, service_names=["big"]), timeout=60)

    def consume() -> None:
        try:
            for ev in fast:
                fast_events.append(ev.provider.agent_uri)
        except grpc.RpcError:
            pass
        finally:
            fast_done.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    wait_for(  # both watchers registered (no snapshot to wait for)
        lambda: debug_metrics(ctl)["gauges"].get("registry_watchers", 0) >= watchers + 2,
        10,
        "both watchers registered",
    )
    before = debug_metrics(ctl)["counters"].get("registry_watchers_dropped_total", 0)
    blob = "x" * 65536
    sent = 0
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        reg.RegisterService(
            rp.RegisterServiceRequest(
                tenant=tenant,
                service_name="big",
                agent_uri=f"a{sent}",
                relay_id="r1",
                local_addr=blob,
            ),
            timeout=5,
        )
        sent += 1
        if (
            sent % 20 == 0
            and debug_metrics(ctl)["counters"].get("registry_watchers_dropped_total", 0) > before
        ):
            break
    else:
        pytest.fail("slow watcher was never dropped")
    # the slow stream delivers what was queued, then ends RESOURCE_EXHAUSTED
    got = 0
    with pytest.raises(grpc.RpcError) as err:
        for _ in slow:
            got += 1
    assert err.value.code() == C.RESOURCE_EXHAUSTED
    assert 0 < got < sent
    slow_ch.close()
    # the fast watcher saw every event, and still works
    deadline = time.monotonic() + 20
    while len(fast_events) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fast_events == [f"a{i}" for i in range(sent)]
    fast.cancel()
    assert fast_done.wait(10)


# -- policy ---------------------------------------------------------------


def test_policy_add_list_remove(admin_of: Callable[[str], grpc.Channel]) -> None:
    pol = pg.PolicyStub(admin_of("crud"))
    rid = pol.AddPolicy(
        pp.AddPolicyRequest(
            rule=rule(
                tenant="crud",
                id="fixed-id",
                decision=2,
                method_pattern="GET *",
                p2p_mode=1,
                relay_mode=1,
            )
        ),
        timeout=5,
    ).id
    assert rid == "fixed-id"
    gen = pol.AddPolicy(pp.AddPolicyRequest(rule=rule(tenant="crud")), timeout=5).id
    assert len(gen) == 36
    listed = pol.ListPolicies(pp.ListPoliciesRequest(tenant="crud"), timeout=5).rules
    assert [r.id for r in listed] == ["fixed-id", gen]
    first = listed[0]
    assert first.decision == pp.DECISION_DENY and first.p2p_mode == pp.P2P_FORBIDDEN
    assert first.relay_mode == pp.RELAY_MODE_FORWARD and first.created_at_unix_ms > 0
    with pytest.raises(grpc.RpcError) as err:
        pol.AddPolicy(pp.AddPolicyRequest(rule=rule(tenant="crud", id="fixed-id")), timeout=5)
    assert err.value.code() == C.ALREADY_EXISTS
    # another tenant's admin cannot remove it (and cannot even ask)
    other = pg.PolicyStub(admin_of("other"))
    assert code_of(other.RemovePolicy, pp.RemovePolicyRequest(id=gen)) == C.OK  # own tenant
    assert other.RemovePolicy(pp.RemovePolicyRequest(id=gen), timeout=5).removed is False
    assert code_of(other.RemovePolicy, pp.RemovePolicyRequest(tenant="crud", id=gen)) == (
        C.PERMISSION_DENIED
    )
    assert (
        pol.RemovePolicy(pp.RemovePolicyRequest(tenant="crud", id=gen), timeout=5).removed is True
    )
    assert (
        pol.RemovePolicy(pp.RemovePolicyRequest(tenant="crud", id=gen), timeout=5).removed is False
    )
    assert len(pol.ListPolicies(pp.ListPoliciesRequest(tenant="crud"), timeout=5).rules) == 1


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pp.AddPolicyRequest(), "rule"),
        (pp.AddPolicyRequest(rule=rule(caller_pattern="")), "rule.caller_pattern"),
        (pp.AddPolicyRequest(rule=rule(target_pattern="")), "rule.target_pattern"),
        (pp.AddPolicyRequest(rule=rule(target_pattern="a\nb")), "rule.target_pattern"),
        (pp.AddPolicyRequest(rule=rule(method_pattern="x" * 2000)), "rule.method_pattern"),
        (pp.AddPolicyRequest(rule=rule(decision=0)), "rule.decision"),
        (pp.AddPolicyRequest(rule=rule(decision=7)), "rule.decision"),
        (pp.AddPolicyRequest(rule=rule(p2p_mode=5)), "rule.p2p_mode"),
        (pp.AddPolicyRequest(rule=rule(relay_mode=5)), "rule.relay_mode"),
        (pp.AddPolicyRequest(rule=rule(expires_unix_ms=1000)), "rule.expires_unix_ms"),
        (pp.AddPolicyRequest(rule=rule(expires_unix_ms=-5)), "rule.expires_unix_ms"),
        (pp.AddPolicyRequest(rule=rule(id=" padded ")), "rule.id"),
        (pp.RemovePolicyRequest(tenant=T), "id"),
    ],
)
def test_policy_bad_input(admin: grpc.Channel, request_: Any, field: str) -> None:
    method = {
        pp.AddPolicyRequest: "AddPolicy",
        pp.RemovePolicyRequest: "RemovePolicy",
        pp.ListPoliciesRequest: "ListPolicies",
    }[type(request_)]
    with pytest.raises(grpc.RpcError) as err:
        getattr(pg.PolicyStub(admin), method)(request_, timeout=5)
    assert err.value.code() == C.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


def test_policy_watch_snapshot_then_live(
    admin_of: Callable[[str], grpc.Channel], relay: grpc.Channel
) -> None:
    tenant = "watchme"
    pol = pg.PolicyStub(admin_of(tenant))
    ids = [
        pol.AddPolicy(
            pp.AddPolicyRequest(rule=rule(tenant=tenant, target_pattern=f"s{i}")), timeout=5
        ).id
        for i in range(3)
    ]
    stream = pg.PolicyStub(relay).Watch(pp.WatchPoliciesRequest(tenant=tenant), timeout=30)
    events = [next(stream) for _ in range(4)]
    assert [e.kind for e in events] == [pp.PolicyEvent.POLICY_KIND_ADDED] * 3 + [
        pp.PolicyEvent.POLICY_KIND_SNAPSHOT_END
    ]
    assert [e.rule.id for e in events[:3]] == ids
    new = pol.AddPolicy(pp.AddPolicyRequest(rule=rule(tenant=tenant)), timeout=5).id
    pg.PolicyStub(admin_of("elsewhere")).AddPolicy(
        pp.AddPolicyRequest(rule=rule(tenant="elsewhere")), timeout=5
    )
    pol.RemovePolicy(pp.RemovePolicyRequest(tenant=tenant, id=ids[0]), timeout=5)
    added, removed = next(stream), next(stream)
    assert added.kind == pp.PolicyEvent.POLICY_KIND_ADDED and added.rule.id == new
    assert added.rule.created_at_unix_ms > 0  # the stored rule, not the request's
    assert removed.kind == pp.PolicyEvent.POLICY_KIND_REMOVED and removed.removed_id == ids[0]
    stream.cancel()


def _engine_from_watch(relay: grpc.Channel, tenant: str) -> PolicyEngine:
    stream = pg.PolicyStub(relay).Watch(pp.WatchPoliciesRequest(tenant=tenant), timeout=30)
    rules = []
    for ev in stream:
        if ev.kind == pp.PolicyEvent.POLICY_KIND_SNAPSHOT_END:
            break
        rules.append(rule_from_proto(ev.rule))
    stream.cancel()
    return PolicyEngine(rules)


def test_policy_precedence_through_the_controller(
    admin_of: Callable[[str], grpc.Channel], relay: grpc.Channel
) -> None:
    tenant = "prec"
    pol = pg.PolicyStub(admin_of(tenant))
    alice = "outrelay://prec/agent/00000000-0000-0000-0000-000000000001"
    now = int(time.time() * 1000)

    def add(**kw: Any) -> str:
        return pol.AddPolicy(pp.AddPolicyRequest(rule=rule(tenant=tenant, **kw)), timeout=5).id

    allow_all = add(caller_pattern="*", target_pattern="*", decision=1)
    deny_db = add(caller_pattern="*", target_pattern="db", decision=2)
    allow_db_alice = add(caller_pattern=alice, target_pattern="db", decision=1)
    deny_wild = add(caller_pattern="outrelay://prec/*", target_pattern="web-*", decision=2)
    temp_deny = add(
        caller_pattern="*", target_pattern="api", decision=2, expires_unix_ms=now + 60_000
    )
    eng = _engine_from_watch(relay, tenant)
    # exact target beats wildcard; DENY beats ALLOW within the exact class
    d = eng.decide(tenant, alice, "db", "", now)
    assert d.verdict is Verdict.DENY and d.rule_id == deny_db
    assert allow_db_alice in eng
    # wildcard class: DENY beats ALLOW
    assert eng.decide(tenant, alice, "web-1", "", now).rule_id == deny_wild
    assert eng.decide(tenant, "outrelay://x/agent/1", "web-1", "", now).rule_id == allow_all
    # expiry: the exact DENY applies until it expires, then the wildcard ALLOW
    assert eng.decide(tenant, alice, "api", "", now).rule_id == temp_deny
    assert eng.decide(tenant, alice, "api", "", now + 60_000).rule_id == allow_all
    assert eng.decide("nobody", alice, "api", "", now).reason == "no matching rule"


# -- audit ----------------------------------------------------------------


def test_audit_record_batch_query(
    ctl: ControllerProcess, admin_of: Callable[[str], grpc.Channel], relay: grpc.Channel
) -> None:
    aud = ag.AuditStub(relay)
    before = debug_metrics(ctl)["counters"].get("audit_events_total", 0)
    aud.Record(
        ap.RecordAuditRequest(
            event=ap.AuditEvent(
                ts_unix_ms=1000,
                tenant="aud",
                caller="c1",
                target="web",
                decision=pp.DECISION_ALLOW,
                reason="r1",
            )
        ),
        timeout=5,
    )
    n = aud.RecordBatch(
        ap.RecordBatchRequest(
            events=[
                ap.AuditEvent(
                    ts_unix_ms=2000,
                    tenant="aud",
                    caller="c2",
                    target="web",
                    decision=2,
                    stream_id="s",
                ),
                ap.AuditEvent(tenant="aud", caller="c1", target="db", decision=1),
            ]
        ),
        timeout=5,
    ).recorded
    assert n == 2
    assert debug_metrics(ctl)["counters"]["audit_events_total"] == before + 3
    q = ag.AuditStub(admin_of("aud"))
    rows = list(q.Query(ap.QueryAuditRequest(tenant="aud"), timeout=5))
    assert [r.caller for r in rows] == ["c1", "c2", "c1"]  # newest first (ts 0 = now)
    assert rows[1].decision == pp.DECISION_DENY and rows[1].stream_id == "s"
    assert [
        r.ts_unix_ms
        for r in q.Query(ap.QueryAuditRequest(tenant="aud", caller="c1", limit=1), timeout=5)
    ] == [rows[0].ts_unix_ms]
    assert [
        r.target for r in q.Query(ap.QueryAuditRequest(tenant="aud", target="web"), timeout=5)
    ] == ["web", "web"]
    assert (
        len(list(q.Query(ap.QueryAuditRequest(tenant="aud", since_unix_ms=2000), timeout=5))) == 2
    )
    assert list(q.Query(ap.QueryAuditRequest(), timeout=5)) == rows  # empty: own tenant
    assert list(ag.AuditStub(admin_of("none")).Query(ap.QueryAuditRequest(), timeout=5)) == []


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("Record", ap.RecordAuditRequest(), "event"),
        ("Record", ap.RecordAuditRequest(event=ap.AuditEvent(caller="c")), "event.tenant"),
        (
            "RecordBatch",
            ap.RecordBatchRequest(events=[ap.AuditEvent(tenant=T), ap.AuditEvent()]),
            "events[1].tenant",
        ),
    ],
)
def test_audit_bad_input(relay: grpc.Channel, method: str, request_: Any, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(ag.AuditStub(relay), method)(request_, timeout=5)
    assert err.value.code() == C.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


def test_audit_query_of_another_tenant_is_refused(admin: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(ag.AuditStub(admin).Query(ap.QueryAuditRequest(tenant="aud"), timeout=5))
    assert err.value.code() == C.PERMISSION_DENIED
    assert err.value.details() == (
        "tenant: outrelay://acme/admin/admin may only use its own tenant 'acme', not 'aud'"
    )


# -- roles ----------------------------------------------------------------

CALLS: dict[str, tuple[type, str, Any]] = {
    "Registry.RegisterService": (
        rg.RegistryStub,
        "RegisterService",
        rp.RegisterServiceRequest(tenant=T, service_name="roles", agent_uri="a", relay_id="r1"),
    ),
    "Registry.Resolve": (
        rg.RegistryStub,
        "Resolve",
        rp.ResolveRequest(tenant=T, service_name="roles"),
    ),
    "Registry.UpsertRelay": (
        rg.RegistryStub,
        "UpsertRelay",
        rp.UpsertRelayRequest(id="r1", endpoint="e"),
    ),
    "Registry.DeregisterAgent": (
        rg.RegistryStub,
        "DeregisterAgent",
        rp.DeregisterAgentRequest(tenant=T, agent_uri="nobody", relay_id="r1"),
    ),
    "Policy.AddPolicy": (
        pg.PolicyStub,
        "AddPolicy",
        pp.AddPolicyRequest(rule=rule(tenant=T)),
    ),
    "Policy.RemovePolicy": (
        pg.PolicyStub,
        "RemovePolicy",
        pp.RemovePolicyRequest(tenant=T, id="none"),
    ),
    "Policy.ListPolicies": (pg.PolicyStub, "ListPolicies", pp.ListPoliciesRequest(tenant=T)),
    "Audit.Record": (
        ag.AuditStub,
        "Record",
        ap.RecordAuditRequest(event=ap.AuditEvent(tenant="roles")),
    ),
    "Audit.RecordBatch": (ag.AuditStub, "RecordBatch", ap.RecordBatchRequest()),
    "Enrollment.IssueToken": (eg.EnrollmentStub, "IssueToken", ep.IssueTokenRequest(tenant=T)),
    "Registry.ListServices": (rg.RegistryStub, "ListServices", rp.ListServicesRequest(tenant=T)),
    "Registry.ListRelays": (rg.RegistryStub, "ListRelays", rp.ListRelaysRequest()),
}
ALLOWED = {
    "relay": {
        "Registry.RegisterService",
        "Registry.Resolve",
        "Registry.UpsertRelay",
        "Registry.DeregisterAgent",
        "Policy.ListPolicies",
        "Audit.Record",
        "Audit.RecordBatch",
    },
    "admin": {
        "Registry.Resolve",
        "Policy.AddPolicy",
        "Policy.RemovePolicy",
        "Policy.ListPolicies",
        "Enrollment.IssueToken",
        "Registry.ListServices",
        "Registry.ListRelays",
    },
    "agent": set(),
}


@pytest.mark.parametrize("role", sorted(ALLOWED))
@pytest.mark.parametrize("call", sorted(CALLS))
def test_role_table(as_: Callable[[str], grpc.Channel], role: str, call: str) -> None:
    stub_cls, method, request = CALLS[call]
    code = code_of(getattr(stub_cls(as_(role)), method), request)
    if call in ALLOWED[role]:
        assert code == C.OK
    else:
        assert code == C.PERMISSION_DENIED


@pytest.mark.parametrize("role", ["relay", "admin", "agent"])
def test_role_table_streams(as_: Callable[[str], grpc.Channel], role: str) -> None:
    ch = as_(role)
    watch = pg.PolicyStub(ch).Watch(pp.WatchPoliciesRequest(tenant=T), timeout=5)
    try:
        next(watch)
        code = C.OK
    except grpc.RpcError as exc:
        code = exc.code()
    watch.cancel()
    query_code = code_of(
        lambda r, timeout: list(ag.AuditStub(ch).Query(r, timeout=timeout)),
        ap.QueryAuditRequest(tenant=T),
    )
    assert code == (C.OK if role == "relay" else C.PERMISSION_DENIED)
    assert query_code == (C.OK if role == "admin" else C.PERMISSION_DENIED)


# Scoping: (caller, stub, method, request, expected code). Admins are held to
# the tenant of their certificate, relays to their own relay id.
ACME_ADMIN = "outrelay://acme/admin/ops"
R1 = "outrelay://acme/relay/r1"
SCOPED: list[tuple[str, str, type, str, Any, grpc.StatusCode]] = [
    ("add own", ACME_ADMIN, pg.PolicyStub, "AddPolicy", pp.AddPolicyRequest(rule=rule()), C.OK),
    (
        "add other",
        ACME_ADMIN,
        pg.PolicyStub,
        "AddPolicy",
        pp.AddPolicyRequest(rule=rule(tenant="globex")),
        C.PERMISSION_DENIED,
    ),
    (
        "add invalid tenant",
        ACME_ADMIN,
        pg.PolicyStub,
        "AddPolicy",
        pp.AddPolicyRequest(rule=rule(tenant="UPPER")),
        C.PERMISSION_DENIED,
    ),
    (
        "add empty tenant",
        ACME_ADMIN,
        pg.PolicyStub,
        "AddPolicy",
        pp.AddPolicyRequest(rule=rule(tenant="")),
        C.OK,
    ),
    (
        "remove other",
        ACME_ADMIN,
        pg.PolicyStub,
        "RemovePolicy",
        pp.RemovePolicyRequest(tenant="globex", id="x"),
        C.PERMISSION_DENIED,
    ),
    (
        "remove empty tenant",
        ACME_ADMIN,
        pg.PolicyStub,
        "RemovePolicy",
        pp.RemovePolicyRequest(id="x"),
        C.OK,
    ),
    (
        "list other",
        ACME_ADMIN,
        pg.PolicyStub,
        "ListPolicies",
        pp.ListPoliciesRequest(tenant="globex"),
        C.PERMISSION_DENIED,
    ),
    ("list empty", ACME_ADMIN, pg.PolicyStub, "ListPolicies", pp.ListPoliciesRequest(), C.OK),
    (
        "services other",
        ACME_ADMIN,
        rg.RegistryStub,
        "ListServices",
        rp.ListServicesRequest(tenant="globex"),
        C.PERMISSION_DENIED,
    ),
    (
        "services own",
        ACME_ADMIN,
        rg.RegistryStub,
        "ListServices",
        rp.ListServicesRequest(tenant=T),
        C.OK,
    ),
    (
        "resolve other",
        ACME_ADMIN,
        rg.RegistryStub,
        "Resolve",
        rp.ResolveRequest(tenant="globex", service_name="s"),
        C.PERMISSION_DENIED,
    ),
    ("relays", ACME_ADMIN, rg.RegistryStub, "ListRelays", rp.ListRelaysRequest(), C.OK),
    (
        "register own id",
        R1,
        rg.RegistryStub,
        "RegisterService",
        rp.RegisterServiceRequest(tenant="globex", service_name="s", agent_uri="a", relay_id="r1"),
        C.OK,
    ),
    (
        "register other id",
        R1,
        rg.RegistryStub,
        "RegisterService",
        rp.RegisterServiceRequest(tenant=T, service_name="s", agent_uri="a", relay_id="r2"),
        C.PERMISSION_DENIED,
    ),
    (
        "register empty id",
        R1,
        rg.RegistryStub,
        "RegisterService",
        rp.RegisterServiceRequest(tenant=T, service_name="s", agent_uri="a"),
        C.INVALID_ARGUMENT,
    ),
    (
        "deregister other id",
        R1,
        rg.RegistryStub,
        "DeregisterAgent",
        rp.DeregisterAgentRequest(tenant=T, agent_uri="a", relay_id="r2"),
        C.PERMISSION_DENIED,
    ),
    (
        "upsert other id",
        R1,
        rg.RegistryStub,
        "UpsertRelay",
        rp.UpsertRelayRequest(id="r2", endpoint="e"),
        C.PERMISSION_DENIED,
    ),
    (
        "upsert region as id",
        R1,
        rg.RegistryStub,
        "UpsertRelay",
        rp.UpsertRelayRequest(id="acme", endpoint="e"),
        C.PERMISSION_DENIED,
    ),
    (
        "upsert own id",
        R1,
        rg.RegistryStub,
        "UpsertRelay",
        rp.UpsertRelayRequest(id="r1", endpoint="e"),
        C.OK,
    ),
    (
        "relay resolve any tenant",
        R1,
        rg.RegistryStub,
        "Resolve",
        rp.ResolveRequest(tenant="globex", service_name="s"),
        C.OK,
    ),
    (
        "relay list policies any tenant",
        R1,
        pg.PolicyStub,
        "ListPolicies",
        pp.ListPoliciesRequest(tenant="globex"),
        C.OK,
    ),
    (
        "relay audit any tenant",
        R1,
        ag.AuditStub,
        "Record",
        ap.RecordAuditRequest(event=ap.AuditEvent(tenant="globex")),
        C.OK,
    ),
]


@pytest.mark.parametrize(
    ("caller", "stub_cls", "method", "request_", "expected"),
    [c[1:] for c in SCOPED],
    ids=[c[0] for c in SCOPED],
)
def test_scope_table(
    as_: Callable[[str], grpc.Channel],
    caller: str,
    stub_cls: type,
    method: str,
    request_: Any,
    expected: grpc.StatusCode,
) -> None:
    try:
        getattr(stub_cls(as_(caller)), method)(request_, timeout=10)
        code, details = C.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
    assert code == expected, details
    if expected == C.PERMISSION_DENIED:
        assert f"{caller} may only use its own " in details


def test_scope_defaults_and_messages(as_: Callable[[str], grpc.Channel]) -> None:
    pol = pg.PolicyStub(as_("outrelay://scoped/admin/ops"))
    rid = pol.AddPolicy(pp.AddPolicyRequest(rule=rule(tenant="")), timeout=5).id
    listed = pol.ListPolicies(pp.ListPoliciesRequest(), timeout=5).rules
    assert [(r.id, r.tenant) for r in listed] == [(rid, "scoped")]
    with pytest.raises(grpc.RpcError) as err:
        pol.ListPolicies(pp.ListPoliciesRequest(tenant="acme"), timeout=5)
    assert err.value.code() == C.PERMISSION_DENIED
    assert err.value.details() == (
        "tenant: outrelay://scoped/admin/ops may only use its own tenant 'scoped', not 'acme'"
    )
    with pytest.raises(grpc.RpcError) as err:
        rg.RegistryStub(as_("outrelay://eu/relay/r7")).UpsertRelay(
            rp.UpsertRelayRequest(id="r8", endpoint="e"), timeout=5
        )
    assert err.value.details() == (
        "id: outrelay://eu/relay/r7 may only use its own relay id 'r7', not 'r8'"
    )
    assert pol.RemovePolicy(pp.RemovePolicyRequest(id=rid), timeout=5).removed is True


def test_no_client_certificate(ctl: ControllerProcess) -> None:
    # the mTLS port refuses the handshake; the enrollment port answers UNAUTHENTICATED
    with ctl.channel(None) as ch:
        assert (
            code_of(pg.PolicyStub(ch).ListPolicies, pp.ListPoliciesRequest(tenant=T))
            == C.UNAVAILABLE
        )
    with ctl.channel(None, target=ctl.addresses["enroll"]) as ch:
        assert (
            code_of(pg.PolicyStub(ch).ListPolicies, pp.ListPoliciesRequest(tenant=T))
            == C.UNAUTHENTICATED
        )
        assert (
            code_of(rg.RegistryStub(ch).Resolve, rp.ResolveRequest(tenant=T, service_name="x"))
            == C.UNAUTHENTICATED
        )
        assert code_of(eg.EnrollmentStub(ch).Renew, ep.RenewRequest()) == C.UNAUTHENTICATED


def test_enrollment_round_trip(ctl: ControllerProcess, admin: grpc.Channel) -> None:
    token = eg.EnrollmentStub(admin).IssueToken(
        ep.IssueTokenRequest(tenant=T, ttl_seconds=60), timeout=5
    )
    identity = Identity.new_agent(T)
    _, csr = make_csr(identity)
    with ctl.channel(None, target=ctl.addresses["enroll"]) as ch:
        stub = eg.EnrollmentStub(ch)
        got = stub.Enroll(ep.EnrollRequest(token=token.token, csr_pem=csr.decode()), timeout=10)
        assert got.agent_uri == str(identity) and "BEGIN CERTIFICATE" in got.cert_pem
        again = code_of(stub.Enroll, ep.EnrollRequest(token=token.token, csr_pem=csr.decode()))
    assert again == C.UNAUTHENTICATED  # one-shot token, persisted in the controller's store


def test_debug_endpoints(ctl: ControllerProcess) -> None:
    base = f"http://{ctl.addresses['debug']}"
    for path, needle in (("/healthz", "ok"), ("/readyz", "ready"), ("/metrics", "outrelay_")):
        with urllib.request.urlopen(base + path, timeout=5) as resp:
            assert resp.status == 200 and needle in resp.read().decode()
