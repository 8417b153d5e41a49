"""The relay's view of the registry: live local agents and provider choice (§15).

``LocalAgents`` maps an agent URI to the sessions (connections) it has here
(added after HELLO_ACK, removed when the connection ends) and remembers which
services each session registered (added when the relay sends its
REGISTER_ACK, dropped with that session). ``ProviderChooser`` picks a provider:

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


#: Sessions one agent identity may hold on this relay at once; a newer one
#: beyond this closes the oldest ("superseded by a newer session").
MAX_SESSIONS_PER_AGENT = 4


class LocalAgents:
    """Live sessions of each agent URI on this relay, and who provides what.

    Duplicate sessions (docs/relay.md "Duplicate sessions"): one identity may
    have several sessions here at once (a restart that overlaps the old
    connection's idle timeout, a second process, a stray probe). The newest
    takes over the identity (:meth:`get`); a registration belongs to the
    session (connection) that made it and goes only with that session; the
    URI is gone -- and only then is the agent deregistered at the controller
    -- when its last session ends.
    """

    def __init__(self) -> None:
        #: URI -> its sessions' connections, oldest first
        self._by_uri: dict[str, list[int]] = {}
        #: (tenant, service) -> (URI, conn) that registered it here, in order
        self._providers: dict[ServiceKey, dict[tuple[str, int], None]] = {}
        #: (URI, conn) -> the services that session registered here
        self._services: dict[tuple[str, int], set[ServiceKey]] = {}

    def __contains__(self, uri: object) -> bool:
        return uri in self._by_uri

    def __len__(self) -> int:
        return len(self._by_uri)

    def add(self, uri: str, conn: int) -> list[int]:
        """Add ``conn`` as the newest session of ``uri``.

        Returns the older sessions beyond :data:`MAX_SESSIONS_PER_AGENT`
        (oldest first): the caller closes them; their :meth:`remove` follows.
        """
        conns = self._by_uri.setdefault(uri, [])
        if conn in conns:
            conns.remove(conn)
        conns.append(conn)
        excess = len(conns) - MAX_SESSIONS_PER_AGENT
        return conns[:excess] if excess > 0 else []

    def remove(self, uri: str, conn: int) -> bool:
        """Forget the session ``conn`` of ``uri`` and the registrations it made.

        Returns True when it was the URI's last session here (then the relay
        deregisters the agent at the controller); False when another session
        of the URI is still up, or ``conn`` was not one of them.
        """
        conns = self._by_uri.get(uri)
        if conns is None or conn not in conns:
            return False
        conns.remove(conn)
        for key in self._services.pop((uri, conn), ()):
            self._drop(key, (uri, conn))
        if conns:
            return False
        del self._by_uri[uri]
        return True

    def uris(self) -> list[str]:
        """Every connected agent URI."""
        return list(self._by_uri)

    def get(self, uri: str) -> int | None:
        """The connection of the newest session of ``uri``, or None."""
        conns = self._by_uri.get(uri)
        return conns[-1] if conns else None

    def sessions(self, uri: str) -> list[int]:
        """Connections of every session of ``uri``, oldest first."""
        return list(self._by_uri.get(uri, ()))

    # -- registrations --------------------------------------------------------

    def provide(self, tenant: str, service: str, uri: str, conn: int) -> None:
        """Session ``conn`` of ``uri`` registered ``service`` of ``tenant`` (REGISTER_ACK sent)."""
        if conn not in self._by_uri.get(uri, ()):
            return
        key = (tenant, service)
        self._providers.setdefault(key, {})[(uri, conn)] = None
        self._services.setdefault((uri, conn), set()).add(key)

    def withdraw(self, tenant: str, service: str, uri: str, conn: int) -> None:
        """Session ``conn`` no longer provides ``service`` (the controller refused it on retry)."""
        key = (tenant, service)
        keys = self._services.get((uri, conn))
        if keys is not None:
            keys.discard(key)
        self._drop(key, (uri, conn))

    def providers(self, tenant: str, service: str) -> list[tuple[str, int]]:
        """(URI, connection) of every connected agent that registered the service here.

        An agent with several sessions that registered it appears once, with
        the newest of those sessions.
        """
        owners = self._providers.get((tenant, service))
        if not owners:
            return []
        newest: dict[str, int] = {}
        for uri, conn in owners:
            have = newest.get(uri)
            if have is None:
                newest[uri] = conn
                continue
            order = self._by_uri[uri]
            if order.index(conn) > order.index(have):
                newest[uri] = conn
        return list(newest.items())

    def _drop(self, key: ServiceKey, owner: tuple[str, int]) -> None:
        owners = self._providers.get(key)
        if owners is not None:
            owners.pop(owner, None)
            if not owners:
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
