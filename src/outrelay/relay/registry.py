"""The relay's view of the registry: live local agents and provider choice (§15).

``LocalAgents`` maps an agent URI to the connection it is on (set after
HELLO_ACK, removed when that connection ends). ``ProviderChooser`` picks one
of the providers the controller's ``Resolve`` returned:

1. providers registered on this relay *and* connected here right now come
   first; several of them are taken in round-robin order;
2. otherwise a provider on another relay (round-robin), reported as remote
   (inter-relay forwarding; the caller turns it into a 502 while that is not
   built);
3. otherwise (none, or only stale ones on this relay id) not found (404).

The reference only ever looks at ``providers[0]``; with our controller there
may be several providers of one service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from outrelay.proto import registry_pb2
from outrelay.relay.errors import NotFound

T = TypeVar("T")


class LocalAgents:
    """agent URI -> connection id of its live connection on this relay."""

    def __init__(self) -> None:
        self._by_uri: dict[str, int] = {}

    def __contains__(self, uri: object) -> bool:
        return uri in self._by_uri

    def __len__(self) -> int:
        return len(self._by_uri)

    def add(self, uri: str, conn: int) -> int | None:
        """Map ``uri`` to ``conn``; return the connection it replaces, if any."""
        old = self._by_uri.get(uri)
        self._by_uri[uri] = conn
        return old if old != conn else None

    def remove(self, uri: str, conn: int) -> bool:
        """Unmap ``uri`` if it still points at ``conn``; return whether it did.

        A newer connection of the same URI keeps its entry (the reference
        deletes it whichever connection ends, relay.md §17 Q5).
        """
        if self._by_uri.get(uri) != conn:
            return False
        del self._by_uri[uri]
        return True

    def uris(self) -> list[str]:
        """Every connected agent URI."""
        return list(self._by_uri)

    def get(self, uri: str) -> int | None:
        """The connection of ``uri``, or None."""
        return self._by_uri.get(uri)


@dataclass(frozen=True, slots=True)
class Chosen:
    """The provider picked for one OPEN_STREAM."""

    #: The provider as the controller returned it.
    provider: registry_pb2.Provider
    #: Its connection on this relay; None when it lives on another relay.
    conn: int | None

    @property
    def remote(self) -> bool:
        """True when the provider is on another relay."""
        return self.conn is None


class ProviderChooser:
    """Round-robin choice among providers, local ones first."""

    def __init__(self, relay_id: str, agents: LocalAgents) -> None:
        self.relay_id = relay_id
        self.agents = agents
        self._turn: dict[tuple[str, str], int] = {}

    def choose(
        self, tenant: str, service: str, providers: Sequence[registry_pb2.Provider]
    ) -> Chosen:
        """Pick a provider of ``tenant``/``service``.

        Raises:
            NotFound: no provider is usable from this relay.
        """
        local = [
            (p, conn)
            for p in providers
            if p.relay_id == self.relay_id and (conn := self.agents.get(p.agent_uri)) is not None
        ]
        if local:
            p, conn = self._next(tenant, service, local)
            return Chosen(p, conn)
        remote = [(p, None) for p in providers if p.relay_id != self.relay_id]
        if remote:
            p, _ = self._next(tenant, service, remote)
            return Chosen(p, None)
        raise NotFound()

    def _next(self, tenant: str, service: str, items: list[T]) -> T:
        key = (tenant, service)
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return items[turn % len(items)]
