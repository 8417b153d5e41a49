"""Fan-out of live events to Watch streams, with a bounded queue per watcher.

Publishing never blocks: an event is put on each interested watcher's queue
and, if that queue is full, the watcher is marked *dropped* (the event is
lost for it). Its stream then delivers what is still queued and ends with
RESOURCE_EXHAUSTED; the client re-lists and watches again. Other watchers
are not affected. ``close_all`` ends every stream at shutdown.

Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from outrelay.observe import REGISTRY, Registry, kv

#: Default capacity of one watcher's queue (the reference's).
DEFAULT_QUEUE = 64

E = TypeVar("E")
_END = object()

log = logging.getLogger("outrelay.controller")


class WatcherDropped(Exception):
    """The watcher's queue overflowed; it must re-list and watch again."""


class HubClosed(Exception):
    """The controller is shutting down."""


@dataclass(eq=False)
class Watcher(Generic[E]):
    """One Watch stream's subscription."""

    #: per-hub id, from 1
    id: int
    #: tenant the watcher follows
    tenant: str
    #: decides whether an event of that tenant is for this watcher
    accept: Callable[[E], bool]
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    dropped: bool = False
    closed: bool = False


class Hub(Generic[E]):
    """Watchers of one service (``name`` is ``registry`` or ``policy``)."""

    def __init__(
        self, name: str, queue_size: int = DEFAULT_QUEUE, metrics: Registry = REGISTRY
    ) -> None:
        self.name = name
        self.queue_size = queue_size
        self._ids = itertools.count(1)
        self._watchers: set[Watcher[E]] = set()
        self._active = metrics.gauge(f"{name}_watchers")
        self._dropped = metrics.counter(f"{name}_watchers_dropped_total")
        self._closed = False

    def __len__(self) -> int:
        return len(self._watchers)

    def add(self, tenant: str, accept: Callable[[E], bool] = lambda _e: True) -> Watcher[E]:
        """Register a watcher; raises HubClosed during shutdown."""
        if self._closed:
            raise HubClosed(f"{self.name}: shutting down")
        watcher: Watcher[E] = Watcher(
            next(self._ids), tenant, accept, asyncio.Queue(self.queue_size)
        )
        self._watchers.add(watcher)
        self._active.set(len(self._watchers))
        log.debug(f"{self.name}: watcher added", extra=kv(watcher_id=watcher.id, tenant=tenant))
        return watcher

    @contextlib.asynccontextmanager
    async def subscription(
        self, tenant: str, accept: Callable[[E], bool] = lambda _e: True
    ) -> AsyncIterator[Watcher[E]]:
        """One Watch RPC's watcher, unregistered when the block ends.

        Raises HubClosed (now or while streaming) and WatcherDropped like
        :meth:`add` and :meth:`events`; ``base.stream_errors`` maps them to
        UNAVAILABLE and RESOURCE_EXHAUSTED.
        """
        watcher = self.add(tenant, accept)
        try:
            yield watcher
        finally:
            self.remove(watcher)

    def remove(self, watcher: Watcher[E]) -> None:
        """Unregister (idempotent)."""
        if watcher in self._watchers:
            self._watchers.discard(watcher)
            self._active.set(len(self._watchers))
            log.debug(
                f"{self.name}: watcher removed",
                extra=kv(watcher_id=watcher.id, tenant=watcher.tenant),
            )

    def publish(self, tenant: str, event: E) -> None:
        """Queue ``event`` for every watcher of ``tenant`` that accepts it."""
        for watcher in list(self._watchers):
            if watcher.tenant != tenant or not watcher.accept(event):
                continue
            try:
                watcher.queue.put_nowait(event)
            except asyncio.QueueFull:
                watcher.dropped = True
                self.remove(watcher)
                self._dropped.inc()
                log.warning(
                    f"{self.name}: dropping slow watcher",
                    extra=kv(watcher_id=watcher.id, tenant=tenant),
                )

    def close_all(self) -> None:
        """End every stream (shutdown); later ``add`` calls fail."""
        self._closed = True
        for watcher in list(self._watchers):
            watcher.closed = True
            try:
                watcher.queue.put_nowait(_END)
            except asyncio.QueueFull:
                pass  # the stream sees ``closed`` once it has drained the queue
            self.remove(watcher)

    async def events(self, watcher: Watcher[E]) -> AsyncIterator[E]:
        """Yield the watcher's events until it is dropped or the hub closes.

        Raises WatcherDropped after the queued events of a dropped watcher,
        HubClosed at shutdown. Always unregisters the watcher on exit.
        """
        try:
            while True:
                if watcher.queue.empty():
                    if watcher.dropped:
                        raise WatcherDropped(f"{self.name}: watcher dropped (slow consumer)")
                    if watcher.closed:
                        raise HubClosed(f"{self.name}: controller shutting down")
                item = await watcher.queue.get()
                if item is _END:
                    raise HubClosed(f"{self.name}: controller shutting down")
                yield item  # type: ignore[misc]
        finally:
            self.remove(watcher)
