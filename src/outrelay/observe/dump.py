"""Append a metrics snapshot to a JSONL file periodically (operations.md §2.4).

The first line is written at once, then one per interval. The file is
opened create+append with mode 0600 and its parent directory is created
(0750) if missing. The dumper stops when cancelled or on the first write
error, which it logs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from outrelay.observe.log import kv
from outrelay.observe.metrics import Registry

#: Used when the configured interval is not positive.
DEFAULT_INTERVAL_S = 10.0

log = logging.getLogger("outrelay.observe")


def write_snapshot(registry: Registry, path: str | os.PathLike[str]) -> None:
    """Append one snapshot line to ``path`` (creating it 0600, parents 0750).

    Raises OSError if the file cannot be written.
    """
    target = Path(path)
    target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(registry.snapshot_json())


async def run_dumper(
    registry: Registry, path: str | os.PathLike[str], interval_s: float = DEFAULT_INTERVAL_S
) -> None:
    """Dump now and then every ``interval_s`` until cancelled or a write fails."""
    if interval_s <= 0:
        interval_s = DEFAULT_INTERVAL_S
    while True:
        try:
            await asyncio.to_thread(write_snapshot, registry, path)
        except OSError as exc:
            log.error("metrics dump failed", extra=kv(path=str(path), err=str(exc)))
            return
        await asyncio.sleep(interval_s)
