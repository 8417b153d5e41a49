"""The controller's database: the only module that speaks SQL.

One APSW connection to one SQLite file in WAL mode, with a busy timeout,
foreign keys on and ``synchronous=FULL`` so an acknowledged write survives
a crash. Every write runs in ``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back
on any exception). The schema is created and upgraded by the forward
migrations of ``outrelay.controller.schema``. Opening runs ``PRAGMA
quick_check`` first (``dbfile.quick_check``): a corrupt file is refused with
``CorruptStoreError`` instead of served.

Methods are blocking; the gRPC services call them on one dedicated worker
thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import apsw
from cryptography.hazmat.primitives.asymmetric import ed25519

from outrelay.controller.config import DEFAULT_PATH
from outrelay.controller.dbfile import quick_check
from outrelay.controller.schema import MIGRATIONS
from outrelay.errors import OutRelayError
from outrelay.pki.store import ApswTokenStore
from outrelay.policy import Action, P2PMode, RelayMode, Rule, Verdict

BUSY_TIMEOUT_MS = 5000

_E = TypeVar("_E", bound=enum.Enum)


def _texts(kind: type[_E]) -> tuple[dict[_E, str], dict[str, _E]]:
    """Stored text of each member (its name in lowercase, as the schema's CHECKs) and back."""
    text_of = {member: member.name.lower() for member in kind}
    return text_of, {text: member for member, text in text_of.items()}


_DECISION_TEXT, _VERDICT_OF_TEXT = _texts(Verdict)
_P2P_TEXT, _P2P_OF_TEXT = _texts(P2PMode)
_RELAY_TEXT, _RELAY_OF_TEXT = _texts(RelayMode)
_ACTION_TEXT, _ACTION_OF_TEXT = _texts(Action)


def _verdict_of_text(text: str) -> Verdict:
    return _VERDICT_OF_TEXT.get(text, Verdict.ALLOW)


class StoreError(OutRelayError):
    """The database refused an operation or could not be opened."""


class CorruptStoreError(StoreError):
    """The database file failed its integrity check (or is not SQLite at all)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(
            f"store: {path} is corrupt ({problem}); restore it from a backup "
            "('outrelay controller backup', see docs/controller.md) or move it away "
            "to start with an empty database"
        )


class DuplicateRuleError(StoreError):
    """A policy rule with that id already exists."""


@dataclass(frozen=True, slots=True)
class ProviderRow:
    """One agent serving one service, as Resolve returns it."""

    #: ``<tenant>/<service_name>``
    service_id: str
    #: tenant of the service
    tenant: str
    #: service name
    service_name: str
    #: provider agent identity
    agent_uri: str
    #: relay holding the agent's connection
    relay_id: str
    #: informational local address ('' if none)
    local_addr: str
    #: last (re)registration, ms since the epoch
    updated_at_unix_ms: int
    #: endpoint of the relay ('' if it never called UpsertRelay)
    relay_endpoint: str = ""
    #: region of the relay ('' if unknown)
    relay_region: str = ""


@dataclass(frozen=True, slots=True)
class RelayRow:
    """One relay instance and its last heartbeat."""

    #: relay id
    id: str
    #: region label ('' if none)
    region: str
    #: address agents and peer relays dial
    endpoint: str
    #: last UpsertRelay call, ms since the epoch
    last_heartbeat_unix_ms: int


@dataclass(frozen=True, slots=True)
class ListedProvider:
    """A provider as an operator lists it (ListServices)."""

    #: the provider, as Resolve would return it
    row: ProviderRow
    #: last UpsertRelay of its relay, ms since the epoch (0 if never)
    relay_last_heartbeat_unix_ms: int
    #: the agent's last RegisterService of any service, ms since the epoch
    agent_last_seen_unix_ms: int


@dataclass(frozen=True, slots=True)
class ServiceRow:
    """One service of a tenant and all its providers."""

    #: ``<tenant>/<service_name>``
    service_id: str
    #: tenant of the service
    tenant: str
    #: service name
    name: str
    #: first registration, ms since the epoch
    created_at_unix_ms: int
    #: providers by agent URI, stale ones included
    providers: tuple[ListedProvider, ...]


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit event."""

    #: event time, ms since the epoch
    ts_unix_ms: int
    #: tenant
    tenant: str
    #: caller identity
    caller: str
    #: target
    target: str
    #: method ('' if none)
    method: str
    #: ALLOW or DENY
    verdict: Verdict
    #: matched rule id or a fixed phrase
    reason: str = ""
    #: free text
    stream_id: str = ""
    #: row id, increasing with insertion (0 before insertion)
    id: int = 0


def now_ms() -> int:
    """Wall-clock time in ms since the epoch."""
    return time.time_ns() // 1_000_000


class Store:
    """All persistent controller state behind one APSW connection.

    Raises ``StoreError`` if the file cannot be opened or its schema is newer
    than this code knows.
    """

    def __init__(self, path: str = DEFAULT_PATH, *, clock: Callable[[], int] = now_ms) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self._db = apsw.Connection(path)
            self._db.setbusytimeout(BUSY_TIMEOUT_MS)
            self._verify()
            self._pragma("journal_mode", "WAL")
            self._pragma("synchronous", "FULL")
            self._pragma("foreign_keys", "ON")
            self._migrate()
            # the token tables' SQL lives in ApswTokenStore (migration 2 created
            # them); our lock serialises it
            self._tokens = ApswTokenStore(
                self._db, clock=lambda: self._clock() // 1000, create_schema=False
            )
        except (apsw.CorruptError, apsw.NotADBError) as exc:
            with contextlib.suppress(Exception):  # AttributeError: never opened
                self._db.close()
            raise CorruptStoreError(path, str(exc)) from None
        except apsw.Error as exc:
            raise StoreError(f"store: open {path}: {exc}") from exc

    # -- plumbing ---------------------------------------------------------

    def _verify(self) -> None:
        """Refuse a corrupt file (``PRAGMA quick_check``) before anything writes to it."""
        problems = quick_check(self._db)
        if problems:
            self._db.close()
            raise CorruptStoreError(self.path, "quick_check: " + "; ".join(problems))

    def _pragma(self, name: str, value: str) -> None:
        self._db.execute(f"PRAGMA {name}={value}").fetchall()

    @contextmanager
    def _write(self) -> Iterator[apsw.Cursor]:
        """A cursor inside ``BEGIN IMMEDIATE``; commit on success, else roll back."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args))

    def _migrate(self) -> None:
        with self._write() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = cur.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                cur.execute("INSERT INTO schema_version (version) VALUES (0)")
        version = self.schema_version()
        if version > len(MIGRATIONS):
            raise StoreError(
                f"store: {self.path} has schema version {version}, newer than this "
                f"controller's {len(MIGRATIONS)}"
            )
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._write() as cur:
                cur.execute(script)
                cur.execute("UPDATE schema_version SET version = ?", (target,))

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        return int(self._read("SELECT version FROM schema_version")[0][0])

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` result ('ok' when healthy)."""
        return "\n".join(str(row[0]) for row in self._read("PRAGMA integrity_check"))

    @property
    def connection(self) -> apsw.Connection:
        """The underlying connection (for stores that share it, e.g. tokens)."""
        return self._db

    def close(self) -> None:
        """Checkpoint the WAL and close the connection; idempotent."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except apsw.Error:
                pass  # a checkpoint is an optimisation; closing is what matters
            self._db.close()
            self._db = None  # type: ignore[assignment]

    # -- enrollment tokens (the outrelay.pki.store.TokenStore protocol) --

    def signing_key(self) -> ed25519.Ed25519PrivateKey:
        """The Ed25519 token-signing key, created on first use and then stable."""
        with self._lock:
            return self._tokens.signing_key()

    def consume(self, jti: str, expires_unix: int) -> bool:
        """Atomically mark token id ``jti`` used; False if it already was (replay).

        Also forgets ids of tokens that have expired (they fail the exp check).
        """
        with self._lock:
            return self._tokens.consume(jti, expires_unix)

    def purge_expired(self, now_unix: int | None = None) -> int:
        """Forget used token ids whose token has expired; return how many."""
        with self._lock:
            return self._tokens.purge_expired(now_unix)

    # -- registry ---------------------------------------------------------

    def register_provider(
        self, tenant: str, service_name: str, agent_uri: str, relay_id: str, local_addr: str
    ) -> ProviderRow:
        """Add or refresh ``agent_uri`` as a provider of the service."""
        now = self._clock()
        service_id = f"{tenant}/{service_name}"
        with self._write() as cur:
            cur.execute(
                "INSERT INTO agents (uri, tenant, last_seen_unix_ms) VALUES (?, ?, ?) "
                "ON CONFLICT(uri) DO UPDATE SET tenant = excluded.tenant, "
                "last_seen_unix_ms = excluded.last_seen_unix_ms",
                (agent_uri, tenant, now),
            )
            cur.execute(
                "INSERT INTO services (id, tenant, name, created_at_unix_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO NOTHING",
                (service_id, tenant, service_name, now),
            )
            cur.execute(
                "INSERT INTO providers (service_id, agent_uri, relay_id, local_addr, "
                "updated_at_unix_ms) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(service_id, agent_uri) DO UPDATE SET relay_id = excluded.relay_id, "
                "local_addr = excluded.local_addr, health = 'healthy', "
                "updated_at_unix_ms = excluded.updated_at_unix_ms",
                (service_id, agent_uri, relay_id, local_addr, now),
            )
            relay = cur.execute(
                "SELECT endpoint, region FROM relays WHERE id = ?", (relay_id,)
            ).fetchone()
        endpoint, region = relay if relay is not None else ("", "")
        return ProviderRow(
            service_id, tenant, service_name, agent_uri, relay_id, local_addr, now, endpoint, region
        )

    def deregister_agent(self, tenant: str, agent_uri: str, relay_id: str) -> list[ProviderRow]:
        """Remove the agent's providers held by ``relay_id``; return what was removed."""
        with self._write() as cur:
            rows = [
                ProviderRow(*row)
                for row in cur.execute(
                    "SELECT p.service_id, s.tenant, s.name, p.agent_uri, p.relay_id, "
                    "p.local_addr, p.updated_at_unix_ms FROM providers p "
                    "JOIN services s ON s.id = p.service_id "
                    "WHERE s.tenant = ? AND p.agent_uri = ? AND p.relay_id = ?",
                    (tenant, agent_uri, relay_id),
                )
            ]
            for row in rows:
                cur.execute(
                    "DELETE FROM providers WHERE service_id = ? AND agent_uri = ?",
                    (row.service_id, row.agent_uri),
                )
                cur.execute(
                    "DELETE FROM services WHERE id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM providers WHERE service_id = ?)",
                    (row.service_id, row.service_id),
                )
        return rows

    _PROVIDER_COLUMNS = (
        "SELECT p.service_id, s.tenant, s.name, p.agent_uri, p.relay_id, p.local_addr, "
        "p.updated_at_unix_ms, COALESCE(r.endpoint, ''), COALESCE(r.region, '') "
        "FROM services s JOIN providers p ON p.service_id = s.id "
        "LEFT JOIN relays r ON r.id = p.relay_id "
    )

    def resolve(
        self, tenant: str, service_name: str, caller_region: str, stale_before_ms: int
    ) -> list[ProviderRow]:
        """Live providers of a service: same region first, then newest first.

        A provider is left out when its relay's last heartbeat is older than
        ``stale_before_ms``; providers of relays that never sent one are kept
        (with an empty endpoint), as in the reference.
        """
        rows = self._read(
            self._PROVIDER_COLUMNS + "WHERE s.tenant = ? AND s.name = ? "
            "AND (r.id IS NULL OR r.last_heartbeat_unix_ms >= ?) "
            "ORDER BY CASE WHEN ? <> '' AND r.region = ? THEN 0 ELSE 1 END, "
            "p.updated_at_unix_ms DESC, p.agent_uri",
            (tenant, service_name, stale_before_ms, caller_region, caller_region),
        )
        return [ProviderRow(*row) for row in rows]

    def list_providers(self, tenant: str = "") -> list[ProviderRow]:
        """Every provider (of one tenant if given), stale ones included."""
        where = "WHERE s.tenant = ? " if tenant else ""
        args = (tenant,) if tenant else ()
        rows = self._read(
            self._PROVIDER_COLUMNS + where + "ORDER BY s.tenant, s.name, p.agent_uri", args
        )
        return [ProviderRow(*row) for row in rows]

    def list_services(self, tenant: str) -> list[ServiceRow]:
        """Every service of ``tenant`` by name, each with all its providers."""
        rows = self._read(
            "SELECT s.id, s.tenant, s.name, s.created_at_unix_ms, p.agent_uri, p.relay_id, "
            "p.local_addr, p.updated_at_unix_ms, COALESCE(r.endpoint, ''), "
            "COALESCE(r.region, ''), COALESCE(r.last_heartbeat_unix_ms, 0), "
            "COALESCE(a.last_seen_unix_ms, 0) "
            "FROM services s LEFT JOIN providers p ON p.service_id = s.id "
            "LEFT JOIN relays r ON r.id = p.relay_id LEFT JOIN agents a ON a.uri = p.agent_uri "
            "WHERE s.tenant = ? ORDER BY s.name, p.agent_uri",
            (tenant,),
        )
        services: dict[str, tuple[tuple[str, str, str, int], list[ListedProvider]]] = {}
        for sid, ten, name, created, agent, relay, addr, updated, ep, region, hb, seen in rows:
            _, providers = services.setdefault(sid, ((sid, ten, name, created), []))
            if agent is None:  # a service without providers (LEFT JOIN)
                continue
            row = ProviderRow(sid, ten, name, agent, relay, addr, updated, ep, region)
            providers.append(ListedProvider(row, hb, seen))
        return [ServiceRow(*head, tuple(providers)) for head, providers in services.values()]

    def upsert_relay(self, relay_id: str, region: str, endpoint: str) -> RelayRow:
        """Record a relay and its heartbeat (now)."""
        now = self._clock()
        with self._write() as cur:
            cur.execute(
                "INSERT INTO relays (id, region, endpoint, last_heartbeat_unix_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET region = excluded.region, "
                "endpoint = excluded.endpoint, "
                "last_heartbeat_unix_ms = excluded.last_heartbeat_unix_ms",
                (relay_id, region, endpoint, now),
            )
        return RelayRow(relay_id, region, endpoint, now)

    def list_relays(self) -> list[RelayRow]:
        """Every relay ever seen, by id."""
        rows = self._read(
            "SELECT id, region, endpoint, last_heartbeat_unix_ms FROM relays ORDER BY id"
        )
        return [RelayRow(*row) for row in rows]

    # -- policy -----------------------------------------------------------

    def add_policy(self, rule: Rule) -> Rule:
        """Insert ``rule`` stamped with the current time; return the stored rule.

        Raises ``DuplicateRuleError`` if the id exists.
        """
        stored = replace(rule, created_at_unix_ms=self._clock())
        try:
            with self._write() as cur:
                cur.execute(
                    "INSERT INTO policies (id, tenant, caller_pattern, target_pattern, "
                    "method_pattern, decision, expires_unix_ms, created_at_unix_ms, p2p_mode, "
                    "relay_mode, action) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        stored.id,
                        stored.tenant,
                        stored.caller_pattern,
                        stored.target_pattern,
                        stored.method_pattern,
                        _DECISION_TEXT[stored.verdict],
                        stored.expires_unix_ms,
                        stored.created_at_unix_ms,
                        _P2P_TEXT[stored.p2p_mode],
                        _RELAY_TEXT[stored.relay_mode],
                        _ACTION_TEXT[stored.action],
                    ),
                )
        except apsw.ConstraintError as exc:
            raise DuplicateRuleError(f"policy: rule id {rule.id!r} already exists") from exc
        return stored

    def remove_policy(self, tenant: str, rule_id: str) -> bool:
        """Delete a rule of ``tenant``; return whether one was deleted."""
        with self._write() as cur:
            cur.execute("DELETE FROM policies WHERE tenant = ? AND id = ?", (tenant, rule_id))
            return bool(self._db.changes())

    def list_policies(self, tenant: str | None, action: Action | None = None) -> list[Rule]:
        """Rules of ``tenant`` (every tenant if None), oldest first, expired included.

        ``action`` keeps only the dial or only the bind rules.
        """
        sql = (
            "SELECT id, tenant, caller_pattern, target_pattern, method_pattern, decision, "
            "expires_unix_ms, created_at_unix_ms, p2p_mode, relay_mode, action FROM policies "
        )
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if action is not None:
            where.append("action = ?")
            args.append(_ACTION_TEXT[action])
        if where:
            sql += "WHERE " + " AND ".join(where) + " "
        rows = self._read(sql + "ORDER BY created_at_unix_ms, rowid", args)
        return [
            Rule(
                id=r[0],
                tenant=r[1],
                caller_pattern=r[2],
                target_pattern=r[3],
                method_pattern=r[4],
                verdict=_verdict_of_text(r[5]),
                expires_unix_ms=r[6],
                created_at_unix_ms=r[7],
                p2p_mode=_P2P_OF_TEXT.get(r[8], P2PMode.ALLOWED),
                relay_mode=_RELAY_OF_TEXT.get(r[9], RelayMode.SPLICE),
                action=_ACTION_OF_TEXT.get(r[10], Action.DIAL),
            )
            for r in rows
        ]

    # -- audit ------------------------------------------------------------

    def record_audit(self, events: Sequence[AuditRow]) -> int:
        """Append events in one transaction (ts 0 becomes now); return the count."""
        now = self._clock()
        with self._write() as cur:
            cur.executemany(
                "INSERT INTO audit_events (ts_unix_ms, tenant, caller, target, method, "
                "decision, reason, stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.ts_unix_ms or now,
                        e.tenant,
                        e.caller,
                        e.target,
                        e.method,
                        _DECISION_TEXT[e.verdict],
                        e.reason,
                        e.stream_id,
                    )
                    for e in events
                ],
            )
        return len(events)

    def query_audit(
        self,
        tenant: str,
        caller: str = "",
        target: str = "",
        since_unix_ms: int = 0,
        limit: int = 0,
    ) -> list[AuditRow]:
        """Events of ``tenant`` matching the filters, newest first.

        ``caller``/``target`` filter when non-empty; ``since_unix_ms > 0`` is
        an inclusive lower bound; ``limit > 0`` caps the rows.
        """
        sql = (
            "SELECT ts_unix_ms, tenant, caller, target, method, decision, reason, stream_id, id "
            "FROM audit_events WHERE tenant = ?"
        )
        args: list[Any] = [tenant]
        if caller:
            sql += " AND caller = ?"
            args.append(caller)
        if target:
            sql += " AND target = ?"
            args.append(target)
        if since_unix_ms > 0:
            sql += " AND ts_unix_ms >= ?"
            args.append(since_unix_ms)
        sql += " ORDER BY ts_unix_ms DESC, id DESC"
        if limit > 0:
            sql += " LIMIT ?"
            args.append(limit)
        return [
            AuditRow(r[0], r[1], r[2], r[3], r[4], _verdict_of_text(r[5]), r[6], r[7], r[8])
            for r in self._read(sql, args)
        ]

    def delete_audit_before(self, cutoff_unix_ms: int) -> int:
        """Delete events older than the cutoff; return how many."""
        with self._write() as cur:
            cur.execute("DELETE FROM audit_events WHERE ts_unix_ms < ?", (cutoff_unix_ms,))
            return int(self._db.changes())
