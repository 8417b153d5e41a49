"""What the three services share: the database worker and error mapping.

``Db.call`` runs a blocking ``Store`` method on the one worker thread that
owns the connection, so the event loop never waits on the disk and SQL
calls are serialised. ``rpc_errors`` turns the errors of a handler into
gRPC statuses in one place:

* ``InvalidArgument`` → INVALID_ARGUMENT (the message names the field)
* ``PermissionDenied`` → PERMISSION_DENIED (a policy refused the request)
* ``DuplicateRuleError`` → ALREADY_EXISTS
* ``StoreError`` / ``apsw.Error`` → INTERNAL (``store: …``)
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import apsw
import grpc

from outrelay.controller.hub import HubClosed, WatcherDropped
from outrelay.controller.store import DuplicateRuleError, Store, StoreError
from outrelay.errors import OutRelayError
from outrelay.identity import valid_label
from outrelay.observe import REGISTRY, Registry, kv

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("outrelay.controller")


class InvalidArgument(OutRelayError):
    """A request field is missing or malformed; the message names the field."""


class PermissionDenied(OutRelayError):
    """Policy refuses the request (e.g. no bind rule for a registration)."""


class Db:
    """A ``Store`` behind a single worker thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="outrelay-db")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for queued calls, then close the store."""
        self._executor.shutdown(wait=True)
        self.store.close()


def require(value: str, field: str) -> str:
    """Return ``value``; raise InvalidArgument naming ``field`` if it is empty."""
    if not value:
        raise InvalidArgument(f"{field}: required")
    return value


def require_tenant(value: str, field: str = "tenant") -> str:
    """A non-empty tenant label (``[a-z0-9][a-z0-9-]{0,62}``) or InvalidArgument."""
    require(value, field)
    if not valid_label(value):
        raise InvalidArgument(f"{field}: {value!r} is not a valid tenant label")
    return value


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, InvalidArgument):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, PermissionDenied):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, DuplicateRuleError):
        await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
    # Watch streams (the hub logged the drop)
    if isinstance(exc, WatcherDropped):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, HubClosed):
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    log.warning("store failed", extra=kv(err=str(exc)))
    await context.abort(grpc.StatusCode.INTERNAL, f"store: {exc}")


_MAPPED = (InvalidArgument, PermissionDenied, StoreError, apsw.Error, WatcherDropped, HubClosed)


def rpc_errors(
    name: str, metrics: Registry = REGISTRY
) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorate a unary handler: map errors to statuses and time it."""
    hist = metrics.histogram(f"rpc_{name}_duration")

    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def handler(self: Any, request: Any, context: Any) -> T:
            with hist.time():
                try:
                    return await fn(self, request, context)
                except _MAPPED as exc:
                    await _abort(context, exc)
                    raise AssertionError("unreachable") from None  # abort() raises

        return handler

    return wrap


def stream_errors(
    fn: Callable[..., AsyncIterator[T]],
) -> Callable[..., AsyncIterator[T]]:
    """Decorate a server-streaming handler: map errors to statuses."""

    @functools.wraps(fn)
    async def handler(self: Any, request: Any, context: Any) -> AsyncIterator[T]:
        try:
            async for item in fn(self, request, context):
                yield item
        except _MAPPED as exc:
            await _abort(context, exc)

    return handler
