"""The audit queue: one event per policy evaluation, never blocking the data path.

Events wait in a bounded queue (depth 1024, relay.md §16.6). A full queue
drops the new event and counts it (``audit_dropped``). The asyncio sender
(``outrelay.relay.server``) takes batches with :meth:`AuditQueue.take` and
sends them with ``Audit.RecordBatch``. A batch the controller does not take
(it is unreachable) goes back in front of the queue and is sent again when
the controller answers (the reference discards it); the queue stays bounded.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable

from outrelay.identity import IdentityError, parse
from outrelay.observe import REGISTRY, Registry, kv
from outrelay.policy.engine import Decision
from outrelay.proto import audit_pb2, policy_pb2

DEPTH = 1024
#: Largest batch one RecordBatch call carries.
BATCH = 256

log = logging.getLogger("outrelay.relay")


@functools.lru_cache(maxsize=4096)
def tenant_of(uri: str) -> str:
    """The tenant segment of an identity URI, '' if it does not parse.

    Cached: every OPEN_STREAM asks this for the same few agent URIs, and a
    full parse is a measurable share of the relay's per-open work.
    """
    try:
        return parse(uri).tenant
    except IdentityError:
        return ""


def audit_event(
    caller: str, target: str, method: str, decision: Decision, now_ms: int
) -> audit_pb2.AuditEvent:
    """The AuditEvent for one evaluation (tenant = the caller's tenant)."""
    return audit_pb2.AuditEvent(
        ts_unix_ms=now_ms,
        tenant=tenant_of(caller),
        caller=caller,
        target=target,
        method=method,
        decision=policy_pb2.DECISION_ALLOW if decision.allowed else policy_pb2.DECISION_DENY,
        reason=decision.reason,
    )


class AuditQueue:
    """A bounded FIFO of audit events with a drop counter."""

    def __init__(self, depth: int = DEPTH, registry: Registry = REGISTRY) -> None:
        self.depth = depth
        self._queue: deque[audit_pb2.AuditEvent] = deque()
        self.dropped = registry.counter("audit_dropped")
        self.sent = registry.counter("audit_sent")
        self._depth_gauge = registry.gauge("audit_queue_depth")
        #: Called after each accepted event (the sender's wake-up).
        self.notify: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, event: audit_pb2.AuditEvent) -> bool:
        """Queue ``event``; False (and counted) when the queue is full."""
        if len(self._queue) >= self.depth:
            self.dropped.inc()
            log.warning("audit queue full, event dropped", extra=kv(caller=event.caller))
            return False
        self._queue.append(event)
        self._depth_gauge.set(len(self._queue))
        if self.notify is not None:
            self.notify()
        return True

    def requeue(self, events: list[audit_pb2.AuditEvent]) -> None:
        """Put a batch the controller did not take back in front (oldest first).

        The queue stays bounded: what does not fit is dropped and counted,
        oldest first.
        """
        self._queue.extendleft(reversed(events))
        while len(self._queue) > self.depth:
            self._queue.popleft()
            self.dropped.inc()
        self._depth_gauge.set(len(self._queue))

    def take(self, limit: int = BATCH) -> list[audit_pb2.AuditEvent]:
        """Remove and return up to ``limit`` events, oldest first."""
        out: list[audit_pb2.AuditEvent] = []
        while self._queue and len(out) < limit:
            out.append(self._queue.popleft())
        self._depth_gauge.set(len(self._queue))
        return out
