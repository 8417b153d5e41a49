from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from outrelay.controller.schema import MIGRATIONS
from outrelay.controller.store import AuditRow, DuplicateRuleError, Store, StoreError
from outrelay.policy import P2PMode, RelayMode, Rule, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Store:
    s = Store(str(tmp_path / "c.db"), clock=clock)
    yield s
    s.close()


def test_pragmas_and_version(store: Store) -> None:
    db = store.connection
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.schema_version() == len(MIGRATIONS)
    assert store.integrity_check() == "ok"


def test_reopen_keeps_data_and_refuses_newer_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    s = Store(path)
    s.upsert_relay("r1", "eu", "r1:7443")
    s.close()
    s.close()  # idempotent
    s = Store(path)
    assert [r.id for r in s.list_relays()] == ["r1"]
    s.connection.execute("UPDATE schema_version SET version = 999")
    s.close()
    with pytest.raises(StoreError, match="schema version 999"):
        Store(path)


def test_several_providers_region_then_recency(store: Store, clock: Clock) -> None:
    store.upsert_relay("r-eu", "eu", "eu:1")
    store.upsert_relay("r-us", "us", "us:1")
    store.register_provider("acme", "web", "a1", "r-eu", "10.0.0.1:80")
    clock.now += 1
    store.register_provider("acme", "web", "a2", "r-us", "")
    clock.now += 1
    store.register_provider("acme", "web", "a3", "r-eu", "")
    got = store.resolve("acme", "web", "eu", stale_before_ms=0)
    assert [p.agent_uri for p in got] == ["a3", "a1", "a2"]
    assert got[1].relay_endpoint == "eu:1" and got[1].local_addr == "10.0.0.1:80"
    assert [p.agent_uri for p in store.resolve("acme", "web", "", 0)] == ["a3", "a2", "a1"]
    assert store.resolve("other", "web", "", 0) == []
    # re-registration moves the provider, does not duplicate it
    clock.now += 1
    store.register_provider("acme", "web", "a1", "r-us", "")
    assert len(store.resolve("acme", "web", "", 0)) == 3


def test_stale_relay_excluded_unknown_relay_kept(store: Store, clock: Clock) -> None:
    store.upsert_relay("old", "eu", "old:1")
    clock.now += 60_000
    store.upsert_relay("new", "eu", "new:1")
    store.register_provider("acme", "web", "a-old", "old", "")
    store.register_provider("acme", "web", "a-new", "new", "")
    store.register_provider("acme", "web", "a-unknown", "ghost", "")
    got = store.resolve("acme", "web", "", stale_before_ms=clock.now - 30_000)
    assert {p.agent_uri for p in got} == {"a-new", "a-unknown"}
    assert len(store.list_providers("acme")) == 3


def test_list_services_groups_providers_with_heartbeat_and_last_seen(
    store: Store, clock: Clock
) -> None:
    store.upsert_relay("r-eu", "eu", "eu:1")
    created = clock.now
    store.register_provider("acme", "web", "a2", "r-eu", "10.0.0.2:80")
    clock.now += 5
    store.register_provider("acme", "web", "a1", "ghost", "")
    store.register_provider("acme", "db", "a1", "ghost", "")
    store.register_provider("other", "web", "x", "r-eu", "")
    # a service row without providers still lists (with none)
    store.connection.execute(
        "INSERT INTO services (id, tenant, name, created_at_unix_ms) "
        "VALUES ('acme/idle', 'acme', 'idle', 1)"
    )
    got = store.list_services("acme")
    assert [(s.name, s.service_id) for s in got] == [
        ("db", "acme/db"),
        ("idle", "acme/idle"),
        ("web", "acme/web"),
    ]
    web = got[2]
    assert web.created_at_unix_ms == created and web.tenant == "acme"
    assert [p.row.agent_uri for p in web.providers] == ["a1", "a2"]
    a1, a2 = web.providers
    assert (a1.row.relay_endpoint, a1.row.relay_region, a1.relay_last_heartbeat_unix_ms) == (
        "",
        "",
        0,
    )
    assert a1.agent_last_seen_unix_ms == clock.now
    assert (a2.row.relay_endpoint, a2.row.relay_region) == ("eu:1", "eu")
    assert a2.relay_last_heartbeat_unix_ms == created and a2.row.local_addr == "10.0.0.2:80"
    assert got[1].providers == ()
    assert store.list_services("nobody") == []


def test_deregister_matches_all_three(store: Store) -> None:
    store.register_provider("acme", "web", "a1", "r1", "")
    store.register_provider("acme", "db", "a1", "r1", "")
    store.register_provider("acme", "web", "a2", "r1", "")
    assert store.deregister_agent("acme", "a1", "r2") == []
    assert store.deregister_agent("other", "a1", "r1") == []
    removed = store.deregister_agent("acme", "a1", "r1")
    assert sorted(p.service_name for p in removed) == ["db", "web"]
    assert [p.agent_uri for p in store.resolve("acme", "web", "", 0)] == ["a2"]
    # the service row goes with its last provider
    names = store.connection.execute("SELECT name FROM services").fetchall()
    assert names == [("web",)]


def test_policy_crud(store: Store, clock: Clock) -> None:
    r = Rule("p1", "acme", "*", "web", "", Verdict.DENY, 0, 0, P2PMode.REQUIRED, RelayMode.FORWARD)
    stored = store.add_policy(r)
    assert stored.created_at_unix_ms == clock.now
    clock.now += 1
    store.add_policy(Rule("p0", "acme", "*", "*"))
    with pytest.raises(DuplicateRuleError):
        store.add_policy(r)
    assert [x.id for x in store.list_policies("acme")] == ["p1", "p0"]
    assert store.list_policies("acme")[0] == stored
    assert store.list_policies("nobody") == []
    assert not store.remove_policy("other", "p1")
    assert store.remove_policy("acme", "p1")
    assert not store.remove_policy("acme", "p1")
    assert [x.id for x in store.list_policies(None)] == ["p0"]


def test_check_constraints_hold(store: Store) -> None:
    with pytest.raises(apsw.ConstraintError):
        store.connection.execute(
            "INSERT INTO policies (id, tenant, caller_pattern, target_pattern, decision, "
            "created_at_unix_ms) VALUES ('x', 't', '*', '*', 'maybe', 0)"
        )


def test_audit_query_and_retention(store: Store, clock: Clock) -> None:
    ev = [
        AuditRow(100, "acme", "c1", "web", "GET", Verdict.ALLOW, "r1"),
        AuditRow(200, "acme", "c2", "web", "", Verdict.DENY, "no matching rule", "s1"),
        AuditRow(0, "acme", "c1", "db", "", Verdict.ALLOW),
        AuditRow(150, "other", "c1", "web", "", Verdict.ALLOW),
    ]
    assert store.record_audit(ev) == 4
    rows = store.query_audit("acme")
    assert [r.ts_unix_ms for r in rows] == [clock.now, 200, 100]
    assert rows[1].verdict is Verdict.DENY and rows[1].stream_id == "s1"
    assert [r.ts_unix_ms for r in store.query_audit("acme", caller="c1")] == [clock.now, 100]
    assert [r.ts_unix_ms for r in store.query_audit("acme", target="web")] == [200, 100]
    assert [r.ts_unix_ms for r in store.query_audit("acme", since_unix_ms=200)] == [clock.now, 200]
    assert len(store.query_audit("acme", limit=1)) == 1
    assert store.query_audit("") == []
    assert store.delete_audit_before(200) == 2
    assert len(store.query_audit("acme")) == 2


def test_token_store_protocol(tmp_path: Path, clock: Clock) -> None:
    from outrelay.pki.store import ApswTokenStore, TokenStore

    path = str(tmp_path / "t.db")
    s = Store(path, clock=clock)
    assert isinstance(s, TokenStore)
    key = s.signing_key()
    far = 4_000_000_000  # seconds; the pki store below uses the real clock
    assert s.consume("j1", far) and not s.consume("j1", far)
    assert s.consume("j0", 10)
    assert s.purge_expired() == 1  # clock is 1000 s
    assert s.consume("j2", 1001) and s.consume("j0", 999)
    clock.now = 1_002_000
    assert s.consume("j3", far)
    assert s.connection.execute("SELECT count(*) FROM used_tokens").fetchone()[0] == 2
    s.close()
    # the pki's own store reads the very same tables
    other = ApswTokenStore(path)
    raw = serialization_raw(other.signing_key())
    assert raw == serialization_raw(key)
    assert not other.consume("j1", far)
    other.close()


def serialization_raw(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def test_deregister_from_old_relay_spares_agent_that_moved(store: Store) -> None:
    """The agent moved from r1 to r2: r1's late DeregisterAgent deletes nothing."""
    store.register_provider("acme", "web", "a1", "r1", "")
    store.register_provider("acme", "web", "a1", "r2", "")  # re-registered via r2
    assert store.deregister_agent("acme", "a1", "r1") == []
    assert [(p.agent_uri, p.relay_id) for p in store.resolve("acme", "web", "", 0)] == [
        ("a1", "r2")
    ]
