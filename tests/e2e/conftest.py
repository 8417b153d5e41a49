"""Shared end-to-end fixtures: a controller and a relay as real processes, agents on demand.

``stack`` (one per test module) is a controller (SQLite file) and a relay
``r1`` enforcing tenant ``acme``, both real ``outrelay`` processes on
127.0.0.1, with no policy rule yet. Its helpers start ``outrelay agent``
processes (``outrelay.agent.testing.AgentProcess``), run the operator
CLI with the admin leaf, read the relay's metrics and processes' VmRSS, and
dial :class:`~outrelay.relay.testing.ProbeAgent` s. An agent started with
``expose`` first gets the bind rules for it (``bind=False`` leaves it to
the closed world). Every process is killed
by PID when the module ends; every wait has a deadline.

``ctl`` (one per test module) is a controller process alone, for tests that
start their own relays; :func:`dial` gives a dev-bundle probe agent past HELLO
on such a relay and :func:`debug_metrics` reads any process's metrics.

``echo_backend`` is a threaded TCP echo server that half-closes after EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from outrelay.agent import testing
from outrelay.childproc import ComponentProcess, child_env
from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.identity import peer_uri
from outrelay.orp import FrameType
from outrelay.relay.testing import ProbeAgent, RelayProcess, close_all

T = TypeVar("T")
TENANT = "acme"
#: The consumer agent's log line for a rejected stream.
REJECTED = re.compile(r"stream to (?P<service>\S+) rejected: (?P<code>\d+) (?P<reason>[^\"]*)\"")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(interval)
    return result


def vm_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for {pid}")


def debug_metrics(proc: ComponentProcess) -> dict[str, Any]:
    """The ``/debug/metrics`` snapshot of a process started with ``--debug-listen``."""
    url = f"http://{proc.addresses['debug']}/debug/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


async def dial(relay: RelayProcess, pki: Path, who: str) -> ProbeAgent:
    """A :class:`ProbeAgent` with the dev bundle's ``agent-<who>`` leaf, past HELLO."""
    agent = await ProbeAgent.dial(
        relay.quic, pki / f"agent-{who}.crt", pki / f"agent-{who}.key", pki / "ca.crt"
    )
    assert (await agent.hello()).type == FrameType.HELLO_ACK
    return agent


def run_async(coro_fn: Callable[[], Awaitable[T]], limit: float = 30.0) -> T:
    """Run ``coro_fn()`` in a fresh loop with a deadline, closing every probe agent."""

    async def bounded() -> T:
        try:
            async with asyncio.timeout(limit):
                return await coro_fn()
        finally:
            await close_all()

    return asyncio.run(bounded())


class AgentProcess(testing.AgentProcess):
    """``outrelay agent`` as a child process (``outrelay.agent.testing``), plus accessors."""

    @property
    def uri(self) -> str:
        return str(self.addresses["uri"])

    def rejections(self, service: str) -> list[tuple[int, str]]:
        """(code, reason) of every stream to ``service`` this consumer logged as rejected."""
        return [
            (int(m["code"]), m["reason"])
            for m in REJECTED.finditer(self.log())
            if m["service"] == service
        ]


class Stack:
    """A controller and a relay (real processes) plus the agents a test starts."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.pki = dev_pki(work / "pki", tenant=TENANT)
        self.ca = self.pki / "ca.crt"
        self.ctl = ControllerProcess(work, self.pki)
        self.relay: RelayProcess | None = None
        self.agents: list[AgentProcess] = []

    def start(self, relay_args: Sequence[str] = ()) -> Stack:
        self.ctl.start()
        self.relay = RelayProcess(
            self.work,
            cert=self.pki / "relay-r1.crt",
            key=self.pki / "relay-r1.key",
            ca=self.ca,
            controller=self.ctl.target,
            args=["--relay-id", "r1", "--tenant", TENANT, *relay_args],
        )
        self.relay.start()
        return self

    def close(self) -> None:
        """Kill every process by PID, agents first."""
        for agent in reversed(self.agents):
            agent.kill()
        if self.relay is not None:
            self.relay.kill()
        self.ctl.kill()

    @property
    def relay_pid(self) -> int:
        assert self.relay is not None
        return self.relay.pid

    @property
    def relay_addr(self) -> str:
        assert self.relay is not None
        host, port = self.relay.quic
        return f"{host}:{port}"

    def leaf(self, who: str) -> tuple[Path, Path]:
        """(cert, key): ``provider``/``consumer`` (dev bundle) or a fresh agent identity."""
        if who in ("provider", "consumer"):
            return self.pki / f"agent-{who}.crt", self.pki / f"agent-{who}.key"
        return self.ctl.leaf(f"outrelay://{TENANT}/agent/{uuid.uuid4()}")

    def agent(
        self,
        name: str,
        *,
        who: str = "",
        expose: dict[str, str] | None = None,
        consume: Sequence[str] = (),
        args: Sequence[str] = (),
        bind: bool = True,
    ) -> AgentProcess:
        """Start an agent process (identity ``who``, default a fresh one) and wait until ready.

        ``bind`` first adds the bind rules letting it provide what it exposes.
        """
        cert, key = self.leaf(who or name)
        if bind and expose:
            self.ctl.allow_bind(peer_uri(cert.read_bytes()), *expose)
        cmd = ["--relay", self.relay_addr, "--cert", str(cert), "--key", str(key)]
        cmd += ["--ca", str(self.ca), *args]
        for service, backend in (expose or {}).items():
            cmd += ["--expose", f"{service}={backend}"]
        for service in consume:
            cmd += ["--consume", f"{service}=127.0.0.1:0"]
        agent = AgentProcess(self.work, name, cmd)
        self.agents.append(agent)
        return agent.start()

    def cli(self, *args: str) -> str:
        """Run an operator command (``policy add ...``) as the admin; its stdout."""
        cert, key = self.ctl.leaf("admin")
        tls = ["--controller", self.ctl.target, "--cert", str(cert), "--key", str(key)]
        cmd = [sys.executable, "-m", "outrelay", *args, *tls, "--ca", str(self.ca)]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=child_env(), timeout=30, check=False
        )
        assert done.returncode == 0, f"{args}: exit {done.returncode}: {done.stderr}"
        return done.stdout

    def policy_add(
        self, rule_id: str, target: str, decision: str, caller: str = "*", action: str = "dial"
    ) -> None:
        self.cli(
            "policy", "add", "--id", rule_id, "--caller", caller, "--target", target,
            "--decision", decision, "--action", action,
        )  # fmt: skip

    def policy_remove(self, rule_id: str) -> None:
        self.cli("policy", "remove", "--id", rule_id)

    def audit(self, **filters: str) -> list[dict[str, Any]]:
        """``outrelay audit query`` rows (JSON), e.g. ``audit(caller=uri)``."""
        opts = [a for k, v in filters.items() for a in (f"--{k}", v)]
        rows: list[dict[str, Any]] = json.loads(
            self.cli("audit", "query", "--limit", "0", *opts, "-o", "json")
        )
        return rows

    def metrics(self) -> dict[str, Any]:
        """The relay's ``/debug/metrics`` snapshot."""
        assert self.relay is not None
        return debug_metrics(self.relay)

    async def probe(self, who: str = "") -> ProbeAgent:
        """A :class:`ProbeAgent` past HELLO (identity ``who``, default a fresh one)."""
        assert self.relay is not None
        cert, key = self.leaf(who or "probe")
        agent = await ProbeAgent.dial(self.relay.quic, cert, key, self.ca)
        ack = await agent.hello()
        assert ack.type == FrameType.HELLO_ACK, ack
        return agent


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Controller + relay for one test module (no policy rules yet)."""
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """A controller process alone (dev PKI in ``<work>/pki``) for one test module."""
    work = tmp_path_factory.mktemp("ctl")
    proc = ControllerProcess(work, dev_pki(work / "pki"))
    try:
        yield proc.start()
    finally:
        proc.kill()


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        with contextlib.suppress(ConnectionError):
            while data := sock.recv(262144):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


@contextlib.contextmanager
def tcp_server(handler: type[socketserver.BaseRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 in a thread; yield ``HOST:PORT``."""
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def echo_backend() -> Iterator[str]:
    """A TCP echo backend (half-closes after EOF): ``HOST:PORT``."""
    with tcp_server(_EchoHandler) as addr:
        yield addr


def exchange(addr: tuple[str, int], payload: bytes, timeout: float = 30.0) -> bytes:
    """Send ``payload``, half-close, read until the other side closes."""
    with socket.create_connection(addr, timeout=timeout) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # a rejected stream closes the socket early
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(262144):
                chunks.append(data)
        sender.join(timeout)
        return b"".join(chunks)
