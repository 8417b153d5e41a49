"""The relay's policy decision cache (relay.md §16.4).

Key (caller, target, method); an entry lives ``ttl`` seconds (5 s) and the
whole cache is flushed on every applied policy change, so a cached answer
is never older than the last rule the relay saw. Soft cap 65 536 entries: a
put at the cap first purges expired entries and, if still full, evicts up to
8 192 of the oldest-inserted ones (the reference evicts arbitrary ones).

``ResolveCache`` keeps the last good Resolve answer per service for when the
controller is unreachable. Time is passed in (monotonic seconds); the caches
never read a clock.
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")

TTL_S = 5.0
SOFT_CAP = 65_536
EVICT = 8_192

Key = tuple[str, str, str]


class DecisionCache(Generic[V]):
    """A TTL map with a soft size cap and a flush."""

    def __init__(self, ttl: float = TTL_S, cap: int = SOFT_CAP, evict: int = EVICT) -> None:
        self.ttl = ttl
        self.cap = cap
        self.evict = evict
        self._entries: dict[Key, tuple[V, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, now: float) -> V | None:
        """The live value for ``key``, or None (an expired entry is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[key]
            return None
        return entry[0]

    def put(self, key: Key, value: V, now: float) -> None:
        """Store ``value`` until ``now + ttl``, making room first if at the cap."""
        if len(self._entries) >= self.cap and key not in self._entries:
            self._entries = {k: e for k, e in self._entries.items() if now < e[1]}
            if len(self._entries) >= self.cap:
                for k in list(self._entries)[: self.evict]:
                    del self._entries[k]
        self._entries[key] = (value, now + self.ttl)

    def flush(self) -> None:
        """Forget everything."""
        self._entries.clear()


#: How long a Resolve answer may stand in for the controller (``--resolve-cache-ttl``).
RESOLVE_TTL_S = 30.0


class ResolveCache(Generic[V]):
    """The last good Resolve answer per (tenant, service), for controller outages.

    Every successful Resolve refreshes its entry; a fresh answer is always
    asked for and used. Only when the controller *fails* (unreachable,
    timeout) does the core fall back to :meth:`stale`, and only to an answer
    younger than ``ttl``. Size-capped like the decision cache (oldest first).
    """

    def __init__(self, ttl: float = RESOLVE_TTL_S, cap: int = SOFT_CAP) -> None:
        self.ttl = ttl
        self.cap = cap
        self._entries: dict[tuple[str, str], tuple[V, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: tuple[str, str], value: V, now: float) -> None:
        """Remember the answer ``value`` got at ``now``."""
        self._entries.pop(key, None)
        if len(self._entries) >= self.cap:
            for k in list(self._entries)[: max(1, self.cap // 8)]:
                del self._entries[k]
        self._entries[key] = (value, now)

    def stale(self, key: tuple[str, str], now: float) -> V | None:
        """The last answer if it is younger than ``ttl``, else None (and dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry[1] > self.ttl:
            del self._entries[key]
            return None
        return entry[0]
