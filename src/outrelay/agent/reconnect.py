"""Choosing a relay and retrying: the backoff schedule and the first-that-answers dial.

The schedule is the reference's (agent.md §7.1, B36): the first attempt at
once, then 1, 2, 4, 8, 16 s and 30 s from then on. We use it at start-up
too (the reference exits when no relay answers at start; ``exit_on_failure``
keeps that behaviour). Relays are tried one
after the other, in the order given, and the first to complete the QUIC
handshake and HELLO / HELLO_ACK wins (the reference's ``DialAny``; its later
concurrent race opens sessions that are closed right away, which the relay
sees as agents coming and going).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from outrelay.agent.errors import ConnectFailed, RegisterRefused
from outrelay.errors import OutRelayError
from outrelay.observe import kv

log = logging.getLogger("outrelay.agent")

T = TypeVar("T")
R = TypeVar("R")


class Backoff:
    """Delays between reconnect attempts: 0, 1, 2, 4, ... capped at ``cap`` seconds."""

    def __init__(self, *, first: float = 1.0, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self._next = 0.0

    def next_delay(self) -> float:
        """The pause before the next attempt; each call doubles the following one."""
        delay = self._next
        self._next = min(self.cap, self.first if delay == 0 else delay * 2)
        return delay

    @property
    def upcoming(self) -> float:
        """The pause :meth:`next_delay` will return next (for "retry in N s" messages)."""
        return self._next

    def reset(self) -> None:
        """A session came up: the next failure retries at once again."""
        self._next = 0.0


async def dial_first(relays: Sequence[R], dial: Callable[[R], Awaitable[T]]) -> T:
    """``await dial(relay)`` for each relay in order; return the first success.

    Raises:
        ConnectFailed: every relay failed (the message lists each error).
    """
    errors: list[str] = []
    for relay in relays:
        try:
            return await dial(relay)
        except RegisterRefused:
            raise  # the relays share one policy: another relay or attempt cannot help
        except (OutRelayError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            log.info("relay did not answer", extra=kv(relay=str(relay), err=reason))
            errors.append(f"{relay}: {reason}")
    if not errors:
        raise ConnectFailed("agent: no relay addresses")
    raise ConnectFailed("agent: all relays failed: " + "; ".join(errors))
