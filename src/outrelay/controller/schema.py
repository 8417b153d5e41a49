"""Controller database schema as forward-only migrations.

Each entry of ``MIGRATIONS`` moves the schema from version ``i`` to ``i+1``
and is applied once, in its own ``BEGIN IMMEDIATE`` transaction, together
with the bump of ``schema_version``. Never edit a shipped migration: append
a new one. A database whose version is newer than ``len(MIGRATIONS)`` is
refused (it was written by a newer controller).
"""

from __future__ import annotations

from outrelay.pki.store import ApswTokenStore

#: SQL scripts; index i upgrades version i to i + 1.
MIGRATIONS: list[str] = [
    # 1: registry, policy, audit
    """
    CREATE TABLE agents (
        uri               TEXT PRIMARY KEY,
        tenant            TEXT NOT NULL,
        last_seen_unix_ms INTEGER NOT NULL,
        metadata          TEXT
    );
    CREATE INDEX idx_agents_tenant ON agents(tenant);

    CREATE TABLE relays (
        id                     TEXT PRIMARY KEY,
        region                 TEXT NOT NULL DEFAULT '',
        endpoint               TEXT NOT NULL,
        last_heartbeat_unix_ms INTEGER NOT NULL
    );

    CREATE TABLE services (
        id                 TEXT PRIMARY KEY,      -- tenant/name
        tenant             TEXT NOT NULL,
        name               TEXT NOT NULL,
        created_at_unix_ms INTEGER NOT NULL,
        UNIQUE (tenant, name)
    );

    -- several providers (agents) may serve one service
    CREATE TABLE providers (
        service_id         TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        agent_uri          TEXT NOT NULL,
        relay_id           TEXT NOT NULL,
        local_addr         TEXT NOT NULL DEFAULT '',
        health             TEXT NOT NULL DEFAULT 'healthy',
        updated_at_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (service_id, agent_uri)
    );
    CREATE INDEX idx_providers_agent ON providers(agent_uri, relay_id);
    CREATE INDEX idx_providers_relay ON providers(relay_id);

    CREATE TABLE policies (
        id                 TEXT PRIMARY KEY,
        tenant             TEXT NOT NULL,
        caller_pattern     TEXT NOT NULL,
        target_pattern     TEXT NOT NULL,
        method_pattern     TEXT NOT NULL DEFAULT '',
        decision           TEXT NOT NULL CHECK (decision IN ('allow', 'deny')),
        expires_unix_ms    INTEGER NOT NULL DEFAULT 0,
        created_at_unix_ms INTEGER NOT NULL,
        p2p_mode           TEXT NOT NULL DEFAULT 'allowed'
                           CHECK (p2p_mode IN ('allowed', 'forbidden', 'required')),
        relay_mode         TEXT NOT NULL DEFAULT 'splice'
                           CHECK (relay_mode IN ('splice', 'forward'))
    );
    CREATE INDEX idx_policies_tenant ON policies(tenant, created_at_unix_ms);

    CREATE TABLE audit_events (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_unix_ms INTEGER NOT NULL,
        tenant     TEXT NOT NULL,
        caller     TEXT NOT NULL,
        target     TEXT NOT NULL,
        method     TEXT NOT NULL DEFAULT '',
        decision   TEXT NOT NULL CHECK (decision IN ('allow', 'deny')),
        reason     TEXT NOT NULL DEFAULT '',
        stream_id  TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX idx_audit_tenant_ts ON audit_events(tenant, ts_unix_ms);
    CREATE INDEX idx_audit_caller ON audit_events(tenant, caller, ts_unix_ms);
    CREATE INDEX idx_audit_target ON audit_events(tenant, target, ts_unix_ms);
    CREATE INDEX idx_audit_ts ON audit_events(ts_unix_ms);
    """,
]

# 2: enrollment-token state: the tables of outrelay.pki.store.ApswTokenStore,
# from its one definition, so either class can serve the file. That script is
# thus a shipped migration too: a change to those tables needs a new entry here.
MIGRATIONS.append(ApswTokenStore.SCHEMA)

# 3: bind rules (OutRelay extension): each rule is a dial rule (the reference's
# only kind, and every rule stored before this version) or a bind rule (who
# may register which service name).
MIGRATIONS.append(
    """
    ALTER TABLE policies ADD COLUMN action TEXT NOT NULL DEFAULT 'dial'
        CHECK (action IN ('dial', 'bind'));
    """
)
