"""``outrelay agent`` as a Python function: :func:`run` mirrors the CLI.

The agent process = one :class:`Agent`, one ``expose`` per ``--expose``, one
local TCP listener per ``--consume`` (each accepted connection becomes a
stream to the named service, bridged byte for byte), an optional debug
HTTP server and metrics dumper, and a ready file written once everything is
bound and the first session is up. SIGINT/SIGTERM stop it gracefully, also
while it still waits for a relay.

The listeners are bound before the first session, and a connection
accepted while no session is up is closed at once (logged with why there
is no session), never left waiting: a local client fails fast and retries,
as it would against a backend that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable
from typing import Any

from outrelay.agent.bridge import bridge, close_writer
from outrelay.agent.client import Agent
from outrelay.agent.config import Mapping, RunConfig, format_hostport, parse_hostport
from outrelay.agent.errors import AgentError, StreamRejected
from outrelay.observe import REGISTRY, DebugServer, kv, run_dumper

log = logging.getLogger("outrelay.agent")

_local_conns = REGISTRY.counter("agent_local_connections")
_refused_no_session = REGISTRY.counter("agent_local_refused_no_session")


class ConsumerListener:
    """A local TCP listener whose connections go to one service through the agent."""

    def __init__(self, agent: Agent, mapping: Mapping) -> None:
        self.agent = agent
        self.mapping = mapping
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> str:
        """The bound ``host:port`` (the real port when 0 was asked for)."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return format_hostport(host, port)

    async def start(self) -> None:
        """Bind the listener. Raises OSError if the address cannot be bound."""
        self._server = await asyncio.start_server(
            self._on_client, self.mapping.host, self.mapping.port
        )

    async def close(self) -> None:
        """Stop accepting and abort the bridged connections."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _local_conns.inc()
        name = self.mapping.name
        if not self.agent.connected:
            _refused_no_session.inc()
            why = self.agent.last_error or "connecting"
            log.warning(
                f"agent: stream to {name} refused: no relay session ({why})",
                extra=kv(service=name),
            )
            await close_writer(writer)
            return
        try:
            # Early data: the local client's bytes follow OPEN_STREAM at once
            # (same packet when they are already here); a reject ends the bridge.
            remote = await self.agent.open_connection(name, early_data=True)
            await bridge((reader, writer), remote)
        except StreamRejected as exc:
            log.warning(
                f"agent: stream to {name} rejected: {exc.code} {exc.reason}",
                extra=kv(service=name, code=exc.code, reason=exc.reason),
            )
            await close_writer(writer)
            return
        except (AgentError, ConnectionError) as exc:
            log.warning(f"agent: stream to {name} failed: {exc}", extra=kv(service=name))
            await close_writer(writer)
            return
        except BaseException:
            await close_writer(writer)
            raise


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await ``work`` unless ``stop`` is set first (then cancel it); return whether it ran out."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopped):
            if not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    if task.cancelled():
        return False
    task.result()  # raises what start raised
    return True


def _write_ready_file(path: str, info: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f)
    os.replace(tmp, path)


async def run(config: RunConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run an agent until ``stop`` is set or SIGINT/SIGTERM arrives.

    Raises:
        ConnectFailed: ``exit_on_failure`` and no relay answered at the first
            attempt (or a REGISTER got no ACK); otherwise it waits for one.
        OSError: a listener could not be bound, TLS files unreadable.
        IdentityError: bad ``--uri`` / certificate without a URI SAN.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    agent = Agent(config.agent)
    listeners = [ConsumerListener(agent, m) for m in config.consume]
    debug: DebugServer | None = None
    dumper: asyncio.Task[None] | None = None
    try:
        for mapping in config.expose:
            await agent.expose(mapping.name, mapping.host, mapping.port)
        for listener in listeners:  # bound first: a bad address fails before any wait
            await listener.start()
        if not await _until_stopped(agent.start(), stop):
            log.info("agent: stopping before any relay session")
            return
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "uri": agent.uri,
            "relay": agent.relay,
            "transport": agent.transport,
            "expose": {m.name: m.address for m in config.expose},
            "consume": {lst.mapping.name: lst.address for lst in listeners},
        }
        if config.debug_listen:
            debug = DebugServer(REGISTRY, ready=lambda: agent.connected)
            host, port = parse_hostport(config.debug_listen)
            bound = await debug.start(host, port)
            info["debug"] = f"{bound[0]}:{bound[1]}"
        if config.metrics_dump:
            dumper = asyncio.create_task(
                run_dumper(REGISTRY, config.metrics_dump, config.metrics_interval)
            )
        for lst in listeners:
            log.info(
                "agent: consuming",
                extra=kv(service=lst.mapping.name, listen=lst.address),
            )
        if config.ready_file:
            _write_ready_file(config.ready_file, info)
        await stop.wait()
        log.info("agent: stopping")
    finally:
        for listener in listeners:
            await listener.close()
        await agent.stop()
        if dumper is not None:
            dumper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dumper
        if debug is not None:
            await debug.close()
        for signum in installed:
            loop.remove_signal_handler(signum)
