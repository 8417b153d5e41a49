"""The debug HTTP server: metrics and health on a loopback port.

Paths (any method):

* ``/debug/metrics`` – snapshot JSON (operations.md §2.3)
* ``/metrics`` – Prometheus text format
* ``/healthz`` – 200 ``ok`` while the process runs
* ``/readyz`` – 200 ``ready`` once the component says so, else 503

A tiny HTTP/1.0-style server on asyncio (stdlib only): one request per
connection, a 5 s limit to read the request head, ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from outrelay.observe.log import kv
from outrelay.observe.metrics import REGISTRY, Registry
from outrelay.observe.prom import CONTENT_TYPE_LATEST, render

HEADER_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}

log = logging.getLogger("outrelay.observe")


class DebugServer:
    """Serve the debug endpoints; ``ready`` decides ``/readyz``."""

    def __init__(
        self,
        registry: Registry = REGISTRY,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and serve in the background; return the bound (host, port).

        Raises OSError if the address cannot be bound.
        """
        self._server = await asyncio.start_server(self._handle, host, port)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop listening and wait for open connections to finish."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def route(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for ``path``."""
        path = path.split("?", 1)[0]
        if path == "/debug/metrics":
            return 200, "application/json", self.registry.snapshot_json().encode()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, render(self.registry)
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            if self.ready():
                return 200, "text/plain; charset=utf-8", b"ready\n"
            return 503, "text/plain; charset=utf-8", b"not ready\n"
        return 404, "text/plain; charset=utf-8", b"404 page not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT_S)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) < 2:
                status, ctype, body = 400, "text/plain", b"bad request\n"
            else:
                status, ctype, body = self.route(parts[1])
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
                + (b"" if parts[:1] == ["HEAD"] else body)
            )
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.debug("debug http: connection error", extra=kv(err=str(exc)))
        except Exception:
            log.exception("debug http: handler failed")
        finally:
            writer.close()


def parse_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too); raise ValueError if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or default_host
    return host, int(port)
