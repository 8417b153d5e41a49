"""``outrelay.control.v1.Audit``: append policy decisions, query them back.

Record keeps the reference's contract; RecordBatch (an OutRelay extension)
stores many events in one transaction. A missing event or tenant is
INVALID_ARGUMENT. Query streams newest first. ``run_retention`` deletes
events older than the retention period on a timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from outrelay.controller.base import Db, InvalidArgument, require_tenant, rpc_errors, stream_errors
from outrelay.controller.store import AuditRow, now_ms
from outrelay.observe import REGISTRY, kv
from outrelay.policy.convert import verdict_of
from outrelay.proto import audit_pb2 as pb
from outrelay.proto import audit_pb2_grpc as pb_grpc

#: Most events accepted in one RecordBatch.
MAX_BATCH = 10_000

log = logging.getLogger("outrelay.controller")


def _row(event: pb.AuditEvent, field: str) -> AuditRow:
    require_tenant(event.tenant, f"{field}.tenant")
    return AuditRow(
        ts_unix_ms=event.ts_unix_ms,
        tenant=event.tenant,
        caller=event.caller,
        target=event.target,
        method=event.method,
        verdict=verdict_of(event.decision),
        reason=event.reason,
        stream_id=event.stream_id,
    )


def event_pb(row: AuditRow) -> pb.AuditEvent:
    """The wire form of a stored event."""
    return pb.AuditEvent(
        ts_unix_ms=row.ts_unix_ms,
        tenant=row.tenant,
        caller=row.caller,
        target=row.target,
        method=row.method,
        # Verdict numbers are the wire Decision numbers (outrelay.policy.convert)
        decision=int(row.verdict),  # type: ignore[arg-type]
        reason=row.reason,
        stream_id=row.stream_id,
    )


class AuditService(pb_grpc.AuditServicer):
    """Servicer of ``outrelay.control.v1.Audit``."""

    def __init__(self, db: Db) -> None:
        self._db = db
        self._recorded = REGISTRY.counter("audit_events_total")

    @rpc_errors("audit_record")
    async def Record(  # noqa: N802 - gRPC method name
        self, request: pb.RecordAuditRequest, context: Any
    ) -> pb.RecordAuditResponse:
        if not request.HasField("event"):
            raise InvalidArgument("event: required")
        row = _row(request.event, "event")
        await self._db.call(self._db.store.record_audit, [row])
        self._recorded.inc()
        log.debug(
            "audit: event recorded",
            extra=kv(
                tenant=row.tenant,
                caller=row.caller,
                target=row.target,
                method=row.method,
                decision=row.verdict.name,
                reason=row.reason,
            ),
        )
        return pb.RecordAuditResponse()

    @rpc_errors("audit_record_batch")
    async def RecordBatch(  # noqa: N802
        self, request: pb.RecordBatchRequest, context: Any
    ) -> pb.RecordBatchResponse:
        if len(request.events) > MAX_BATCH:
            raise InvalidArgument(f"events: more than {MAX_BATCH} in one batch")
        rows = [_row(event, f"events[{i}]") for i, event in enumerate(request.events)]
        if rows:
            await self._db.call(self._db.store.record_audit, rows)
            self._recorded.add(len(rows))
        return pb.RecordBatchResponse(recorded=len(rows))

    @stream_errors
    async def Query(  # noqa: N802
        self, request: pb.QueryAuditRequest, context: Any
    ) -> AsyncIterator[pb.AuditEvent]:
        tenant = require_tenant(request.tenant)
        rows = await self._db.call(
            self._db.store.query_audit,
            tenant,
            request.caller,
            request.target,
            request.since_unix_ms,
            request.limit,
        )
        log.debug(
            "audit: query",
            extra=kv(
                tenant=tenant,
                caller=request.caller,
                target=request.target,
                since_ms=request.since_unix_ms,
                limit=request.limit,
                rows=len(rows),
            ),
        )
        for row in rows:
            yield event_pb(row)


async def run_retention(
    db: Db,
    retention_s: float,
    *,
    every_s: float = 60.0,
    clock: Callable[[], int] = now_ms,
) -> None:
    """Delete events older than ``retention_s`` now and every ``every_s`` until cancelled."""
    deleted = REGISTRY.counter("audit_events_expired_total")
    while True:
        cutoff = clock() - int(retention_s * 1000)
        try:
            n = await db.call(db.store.delete_audit_before, cutoff)
        except Exception as exc:  # keep the timer alive; the next round retries
            log.warning("audit: retention failed", extra=kv(err=str(exc)))
        else:
            if n:
                deleted.add(n)
                log.info("audit: retention deleted events", extra=kv(rows=n, cutoff_ms=cutoff))
        await asyncio.sleep(every_s)
