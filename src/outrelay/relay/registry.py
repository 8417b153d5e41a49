"""The relay's view of the registry: live local agents and provider choice (§15).

``LocalAgents`` maps an agent URI to the connection it is on (set after
HELLO_ACK, removed when that connection ends) and remembers which services
each connected agent registered here (added when the relay sends its
REGISTER_ACK, dropped with the URI). ``ProviderChooser`` picks a provider:

* :meth:`~ProviderChooser.choose_local`: one of the agents connected here
  that registered the service, round-robin, with no controller call
  ("local-first", docs/relay.md);
* :meth:`~ProviderChooser.choose`: one of the providers the controller's
  ``Resolve`` returned:

  1. providers registered on this relay *and* connected here right now come
     first; several of them are taken in round-robin order;
  2. otherwise a provider on another relay (round-robin), reported as remote
     (inter-relay forwarding; the caller turns it into a 502 while that is
     not built);
  3. otherwise (none, or only stale ones on this relay id) not found (404).

Both share one round-robin turn per (tenant, service). The reference only
ever looks at ``providers[0]``; with our controller there may be several
providers of one service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from outrelay.proto import registry_pb2
from outrelay.relay.errors import NotFound

T = TypeVar("T")

#: (tenant, service name)
ServiceKey = tuple[str, str]


class LocalAgents:
    """agent URI -> connection id of its live connection on this relay, and who provides what."""

    def __init__(self) -> None:
        self._by_uri: dict[str, int] = {}
        #: (tenant, service) -> URIs that registered it here, in registration order
        self._providers: dict[ServiceKey, dict[str, None]] = {}
        #: URI -> the services it registered here
        self._services: dict[str, set[ServiceKey]] = {}

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

        Its registrations go with it (the relay deregisters the agent at the
        controller at the same moment). A newer connection of the same URI
        keeps its entry and the registrations (the reference deletes it
        whichever connection ends, relay.md §17 Q5).
        """
        if self._by_uri.get(uri) != conn:
            return False
        del self._by_uri[uri]
        for key in self._services.pop(uri, ()):
            self._drop(key, uri)
        return True

    def uris(self) -> list[str]:
        """Every connected agent URI."""
        return list(self._by_uri)

    def get(self, uri: str) -> int | None:
        """The connection of ``uri``, or None."""
        return self._by_uri.get(uri)

    # -- registrations --------------------------------------------------------

    def provide(self, tenant: str, service: str, uri: str) -> None:
        """``uri`` (connected) registered ``service`` of ``tenant`` and got REGISTER_ACK."""
        if uri not in self._by_uri:
            return
        key = (tenant, service)
        self._providers.setdefault(key, {})[uri] = None
        self._services.setdefault(uri, set()).add(key)

    def withdraw(self, tenant: str, service: str, uri: str) -> None:
        """``uri`` no longer provides ``service`` (the controller refused it on retry)."""
        key = (tenant, service)
        keys = self._services.get(uri)
        if keys is not None:
            keys.discard(key)
        self._drop(key, uri)

    def providers(self, tenant: str, service: str) -> list[tuple[str, int]]:
        """(URI, connection) of every connected agent that registered the service here."""
        uris = self._providers.get((tenant, service))
        if not uris:
            return []
        by_uri = self._by_uri
        return [(uri, by_uri[uri]) for uri in uris]

    def _drop(self, key: ServiceKey, uri: str) -> None:
        uris = self._providers.get(key)
        if uris is not None:
            uris.pop(uri, None)
            if not uris:
                del self._providers[key]


@dataclass(frozen=True, slots=True)
class Chosen:
    """The provider picked for one OPEN_STREAM."""

    #: The provider's agent URI.
    uri: str
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
        self._turn: dict[ServiceKey, int] = {}

    def choose_local(self, tenant: str, service: str) -> Chosen | None:
        """A connected agent that registered ``tenant``/``service`` here, or None."""
        local = self.agents.providers(tenant, service)
        if not local:
            return None
        uri, conn = self._next(tenant, service, local)
        return Chosen(uri, conn)

    def choose(
        self, tenant: str, service: str, providers: Sequence[registry_pb2.Provider]
    ) -> Chosen:
        """Pick a provider of ``tenant``/``service`` among the controller's answer.

        Raises:
            NotFound: no provider is usable from this relay.
        """
        local = [
            (p.agent_uri, conn)
            for p in providers
            if p.relay_id == self.relay_id and (conn := self.agents.get(p.agent_uri)) is not None
        ]
        if local:
            uri, conn = self._next(tenant, service, local)
            return Chosen(uri, conn)
        remote = [p.agent_uri for p in providers if p.relay_id != self.relay_id]
        if remote:
            return Chosen(self._next(tenant, service, remote), None)
        raise NotFound()

    def _next(self, tenant: str, service: str, items: list[T]) -> T:
        key = (tenant, service)
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return items[turn % len(items)]
