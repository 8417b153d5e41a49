"""Byte-exact copying between two (reader, writer) pairs, with half-close both ways.

Each direction is a loop: read up to 64 KiB, write it, ``await drain()``.
Backpressure is therefore the transports' own: a slow destination blocks
``drain``, the loop stops reading, the source reader's buffer fills and it
pauses its transport (a TCP socket stops being read; a relay stream stops
granting QUIC credit).

When a source ends cleanly (EOF) the destination is half-closed
(``write_eof``) and the other direction goes on, so ``printf ... | nc``
style exchanges get their reply. When a direction fails (reset, broken
pipe, a relay stream that could not be resumed) both sides are aborted:
the error cannot be passed on as a half-close. A TCP socket is aborted with
``SO_LINGER`` 0, so its peer gets a reset (RST) rather than an EOF that would
pass a truncated transfer off as complete. When both directions are done
both writers are closed.

A relay stream opened with early data may turn out to be refused
(:class:`~outrelay.agent.errors.OpenError`: STREAM_REJECT, or closed without
an answer) after the bridge started. The other side then never got a byte,
so it is closed cleanly, as a refused open always closed it, and the
``OpenError`` is raised for the caller to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

from outrelay.agent.errors import OpenError
from outrelay.observe import kv

log = logging.getLogger("outrelay.agent")

#: Bytes read per copy step.
CHUNK = 64 * 1024

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy ``reader`` to ``writer`` until EOF, then half-close ``writer``.

    Returns the bytes copied. Raises what the reader or writer raise
    (ConnectionError, OSError, ...).
    """
    total = 0
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        writer.write(data)
        total += len(data)
        await writer.drain()
    if not writer.is_closing() and writer.can_write_eof():
        writer.write_eof()
    return total


async def bridge(a: Pair, b: Pair) -> tuple[int, int]:
    """Copy ``a`` -> ``b`` and ``b`` -> ``a`` until both are done; close both.

    Returns (bytes a->b, bytes b->a); a failed direction counts what it
    copied before failing. Never raises for I/O errors (they are logged at
    debug level); cancellation aborts both sides.

    Raises:
        OpenError: a relay stream was refused before it opened (early data);
            both sides were closed, not reset.
    """
    (ar, aw), (br, bw) = a, b
    counts = [0, 0]
    refused: BaseException | None = None

    async def run(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts[index] = await pipe(reader, writer)

    forward = asyncio.ensure_future(run(0, ar, bw))
    backward = asyncio.ensure_future(run(1, br, aw))
    tasks = {forward, backward}
    try:
        pending = tasks
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            errors = _errors(done)
            refused = next((e for e in errors if isinstance(e, OpenError)), None)
            if refused is not None:
                for t in pending:
                    t.cancel()
            elif errors:
                for e in errors:
                    log.debug("bridge: direction failed", extra=kv(err=str(e)))
                _abort(aw, bw)
            else:
                continue
            if pending:
                await asyncio.wait(pending)
            _errors(pending)
            break
    except BaseException:
        for t in tasks:
            t.cancel()
        _abort(aw, bw)
        raise
    finally:
        await asyncio.gather(close_writer(aw), close_writer(bw))
    if refused is not None:
        raise refused
    return counts[0], counts[1]


def _errors(tasks: set[asyncio.Task[None]]) -> list[BaseException]:
    """The exceptions of finished ``tasks`` (retrieved, so none is reported as lost)."""
    return [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close ``writer`` and wait until it is closed, ignoring errors."""
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


_LINGER_RESET = struct.pack("ii", 1, 0)


def _abort(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        with contextlib.suppress(Exception):
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.type == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        with contextlib.suppress(Exception):
            writer.transport.abort()
