"""Migration 3 (policies.action) and bind rules in the store."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from outrelay.controller.schema import MIGRATIONS
from outrelay.controller.store import Store
from outrelay.policy import Action, Rule


def test_migration_3_turns_existing_rules_into_dial_rules(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    db = apsw.Connection(path)  # a database written by a controller at schema version 2
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for script in MIGRATIONS[:2]:
        db.execute(script)
    db.execute("INSERT INTO schema_version (version) VALUES (2)")
    db.execute(
        "INSERT INTO policies (id, tenant, caller_pattern, target_pattern, decision, "
        "created_at_unix_ms) VALUES ('old', 'acme', '*', '*', 'allow', 1)"
    )
    db.close()
    store = Store(path)
    try:
        assert store.schema_version() == len(MIGRATIONS) >= 3
        (rule,) = store.list_policies("acme")
        assert rule.id == "old" and rule.action is Action.DIAL
        assert store.list_policies("acme", Action.BIND) == []
    finally:
        store.close()


def test_bind_rules_stored_and_filtered(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "c.db"))
    try:
        store.add_policy(Rule("d", "acme", "*", "web"))
        store.add_policy(Rule("b", "acme", "outrelay://acme/agent/*", "web", action=Action.BIND))
        assert [r.id for r in store.list_policies("acme", Action.BIND)] == ["b"]
        assert [r.id for r in store.list_policies("acme", Action.DIAL)] == ["d"]
        assert {r.id: r.action for r in store.list_policies(None)} == {
            "d": Action.DIAL,
            "b": Action.BIND,
        }
        with pytest.raises(apsw.ConstraintError):
            store.connection.execute("UPDATE policies SET action = 'own' WHERE id = 'b'")
    finally:
        store.close()
