"""Where enrollment tokens keep their state: the signing key and the used ids.

The reference kept both in memory, so a restart made every outstanding token
unverifiable and reset the replay set. Here they live in two SQLite tables
(``enrollment_key``, ``used_tokens``), owned by :class:`ApswTokenStore`: all
SQL of this feature is in that one class, so the controller can host the same
tables in its own database by handing over its connection.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import apsw
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


@runtime_checkable
class TokenStore(Protocol):
    """Persistence needed by :class:`~outrelay.pki.tokens.TokenIssuer` and ``TokenVerifier``."""

    def signing_key(self) -> ed25519.Ed25519PrivateKey:
        """The Ed25519 token-signing key, created on first use and then stable."""
        ...

    def consume(self, jti: str, expires_unix: int) -> bool:
        """Atomically mark ``jti`` used; False if it was already used (a replay).

        Also forgets ids of tokens that have expired.
        """
        ...

    def purge_expired(self, now_unix: int | None = None) -> int:
        """Forget used ids whose token has expired (they fail the exp check anyway)."""
        ...


class MemoryTokenStore:
    """A :class:`TokenStore` in memory (tests, throw-away tools): the reference's behaviour."""

    def __init__(self) -> None:
        self._key = ed25519.Ed25519PrivateKey.generate()
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()

    def signing_key(self) -> ed25519.Ed25519PrivateKey:
        return self._key

    def consume(self, jti: str, expires_unix: int) -> bool:
        now = int(time.time())
        with self._lock:
            for old in [j for j, exp in self._used.items() if exp < now]:
                del self._used[old]
            if jti in self._used:
                return False
            self._used[jti] = expires_unix
            return True

    def purge_expired(self, now_unix: int | None = None) -> int:
        now = int(time.time()) if now_unix is None else now_unix
        with self._lock:
            old = [jti for jti, exp in self._used.items() if exp < now]
            for jti in old:
                del self._used[jti]
            return len(old)


class ApswTokenStore:
    """A :class:`TokenStore` in SQLite through APSW (WAL, busy timeout, BEGIN IMMEDIATE).

    ``ApswTokenStore(path)`` opens (creating with mode 0600, since it holds a
    private key) its own database; ``ApswTokenStore(connection)`` adds the
    tables to a database someone else owns (the controller's). Safe to share
    between threads: each transaction holds the instance's lock. ``clock``
    gives the time in whole Unix seconds. ``create_schema=False`` skips
    creating the tables, for an owner that already did (the controller's
    migrations).
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS enrollment_key (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        private_key BLOB NOT NULL,           -- raw 32-byte Ed25519 seed
        created_unix INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS used_tokens (
        jti TEXT PRIMARY KEY,
        expires_unix INTEGER NOT NULL,
        used_unix INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS used_tokens_expires ON used_tokens (expires_unix);
    """

    BUSY_TIMEOUT_MS = 5000

    def __init__(
        self,
        target: str | os.PathLike[str] | apsw.Connection,
        *,
        clock: Callable[[], int] = lambda: int(time.time()),
        create_schema: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._key: ed25519.Ed25519PrivateKey | None = None
        if isinstance(target, apsw.Connection):
            self._conn = target
            self._owned = False
        else:
            path = str(target)
            on_disk = path != ":memory:"
            if on_disk and not Path(path).exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._conn = apsw.Connection(path)
            self._owned = True
            if on_disk:
                self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.set_busy_timeout(self.BUSY_TIMEOUT_MS)
        if create_schema:
            with self._lock, self._transaction():
                self._conn.execute(self.SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception (caller holds the lock)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def signing_key(self) -> ed25519.Ed25519PrivateKey:
        with self._lock:
            if self._key is not None:
                return self._key
            fresh = ed25519.Ed25519PrivateKey.generate()
            seed = fresh.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            # INSERT OR IGNORE: if another process created the key first, keep theirs.
            with self._transaction():
                self._conn.execute(
                    "INSERT OR IGNORE INTO enrollment_key (id, private_key, created_unix) "
                    "VALUES (1, ?, ?)",
                    (seed, self._clock()),
                )
            row = self._conn.execute(
                "SELECT private_key FROM enrollment_key WHERE id = 1"
            ).fetchone()
            assert row is not None
            self._key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(row[0]))
            return self._key

    def consume(self, jti: str, expires_unix: int) -> bool:
        with self._lock:
            now = self._clock()
            with self._transaction():
                # ids of expired tokens can go: those tokens fail the exp check anyway
                self._conn.execute("DELETE FROM used_tokens WHERE expires_unix < ?", (now,))
                self._conn.execute(
                    "INSERT OR IGNORE INTO used_tokens (jti, expires_unix, used_unix) "
                    "VALUES (?, ?, ?)",
                    (jti, int(expires_unix), now),
                )
                fresh = self._conn.changes() == 1
            return fresh

    def purge_expired(self, now_unix: int | None = None) -> int:
        now = self._clock() if now_unix is None else now_unix
        with self._lock:
            with self._transaction():
                self._conn.execute("DELETE FROM used_tokens WHERE expires_unix < ?", (now,))
            return self._conn.changes()

    def close(self) -> None:
        """Close the database if this store opened it."""
        if self._owned:
            self._conn.close()

    def __enter__(self) -> ApswTokenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
