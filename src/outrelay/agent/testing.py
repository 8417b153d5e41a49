"""Real-process failover scenarios for tests and the soak script (not used by the agent).

:class:`FailoverLab` starts, on 127.0.0.1: a controller, relays A and B on
fixed ports, a TCP sink (it hashes what it receives, answers the hex
sha256 and notes the longest silence between two reads), a provider agent
exposing the sink as ``svc-sink`` and a consumer agent listening for it; both
agents get ``--relay A,B``. :meth:`FailoverLab.transfer` pushes N bytes
through the consumer listener and, once the sink has seen ``kill_at`` bytes,
SIGKILLs relay A (and, for ``restart``, starts A again on the same address).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import socketserver
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outrelay.childproc import ComponentProcess
from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.identity import peer_uri
from outrelay.relay.testing import RelayProcess
from outrelay.transport import MiB


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody uses right now on 127.0.0.1 (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProcess(ComponentProcess):
    """``outrelay agent`` as a child process (``<workdir>/<name>.log``)."""

    start_timeout = 30.0

    def __init__(self, workdir: Path, name: str, args: Sequence[str]) -> None:
        super().__init__(name, ["agent", *args], workdir)

    def consume_addr(self, service: str) -> tuple[str, int]:
        """(host, port) of the ``--consume`` listener for ``service``."""
        host, _, port = self.addresses["consume"][service].rpartition(":")
        return host, int(port)

    def metrics(self) -> dict[str, Any]:
        """``/debug/metrics`` of an agent started with ``--debug-listen``."""
        url = f"http://{self.addresses['debug']}/debug/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data


@dataclass
class SinkRecord:
    """What the sink saw on one connection."""

    received: int = 0
    sha256: str = ""
    #: Longest silence between two reads once bytes flowed (seconds).
    max_gap: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


class _SinkHandler(socketserver.BaseRequestHandler):
    server: SinkServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        record = SinkRecord()
        self.server.records.append(record)
        digest = hashlib.sha256()
        last: float | None = None
        buf = bytearray(256 * 1024)
        view = memoryview(buf)
        try:
            while n := sock.recv_into(buf):
                now = time.monotonic()
                if last is not None and now - last > record.max_gap:
                    record.max_gap = now - last
                last = now
                digest.update(view[:n])
                record.received += n
            record.sha256 = digest.hexdigest()
            sock.sendall(record.sha256.encode())
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            record.done.set()


class SinkServer(socketserver.ThreadingTCPServer):
    """TCP sink: reads to EOF, answers the hex sha256 of what it read, half-closes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.records: list[SinkRecord] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@dataclass
class TransferResult:
    """One transfer through the lab."""

    size: int
    sent_sha256: str
    #: The sink's answer ("" if none came).
    echoed_sha256: str
    #: Bytes the sink received.
    received: int
    #: Longest silence the sink saw between two reads (the pause).
    pause: float
    #: Seconds from first byte to the sink's answer.
    duration: float
    #: Error the sending application saw (``None``: none).
    error: str | None = None
    #: ``time.monotonic()`` of the kill (``None``: no kill) and of the sender's end.
    killed_at: float | None = None
    ended_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.echoed_sha256 == self.sent_sha256


class FailoverLab:
    """Controller, relays A and B, a sink, a provider and a consumer agent (module doc)."""

    def __init__(
        self,
        workdir: Path,
        *,
        resume_window: str = "30s",
        agent_args: Sequence[str] = (),
        relays: Sequence[str] = ("A", "B"),
        tcp: bool = False,
        transports: dict[str, str] | None = None,
        hide_quic: Sequence[str] = (),
    ) -> None:
        """``tcp``: every relay also listens with ``--listen-tcp`` and the agents get
        ``--relay-tcp``; ``transports``: ``--transport`` per role (``provider``,
        ``consumer``); ``hide_quic``: relays whose QUIC address the agents are
        given as a port nobody listens on (QUIC fails there, TCP must carry it)."""
        self.work = workdir
        self.resume_window = resume_window
        self.agent_args = list(agent_args)
        self.pki = dev_pki(workdir / "pki")
        self.ctl = ControllerProcess(workdir, self.pki)
        self.sink = SinkServer()
        self.names = tuple(relays)
        self.ports = {name: free_port(socket.SOCK_DGRAM) for name in self.names}
        self.tcp_ports = {name: free_port() for name in self.names} if tcp else {}
        self.transports = dict(transports or {})
        self.hide_quic = set(hide_quic)
        self._dead_udp = free_port(socket.SOCK_DGRAM)
        self.relays: dict[str, RelayProcess] = {}
        self.provider: AgentProcess | None = None
        self.consumer: AgentProcess | None = None
        self._generation = 0
        self._bound = False

    # -- processes ----------------------------------------------------------

    def relay(self, name: str) -> RelayProcess:
        """Start relay ``name`` (A or B) on its fixed port and return it."""
        self._generation += 1
        pki = self.pki
        proc = RelayProcess(
            self.work,
            cert=pki / "relay-r1.crt",
            key=pki / "relay-r1.key",
            ca=pki / "ca.crt",
            controller=self.ctl.target,
            args=[
                "--no-policy",
                "--listen",
                f"127.0.0.1:{self.ports[name]}",
                "--resume-window",
                self.resume_window,
                *(["--listen-tcp", f"127.0.0.1:{self.tcp_ports[name]}"] if self.tcp_ports else []),
            ],
            name=f"relay-{name}-{self._generation}",
        )
        self.relays[name] = proc
        return proc.start()

    def agent(self, role: str) -> AgentProcess:
        """Start the ``provider`` or ``consumer`` agent (``--relay A,B``)."""
        pki = self.pki
        relays = ",".join(
            f"127.0.0.1:{self._dead_udp if n in self.hide_quic else self.ports[n]}"
            for n in self.names
        )
        args = [
            "--relay",
            relays,
            "--ca",
            str(pki / "ca.crt"),
            "--cert",
            str(pki / f"agent-{role}.crt"),
            "--key",
            str(pki / f"agent-{role}.key"),
            "--resume-window",
            self.resume_window,
            "--log-level",
            "debug",
            "--debug-listen",
            "127.0.0.1:0",
            *self.agent_args,
        ]
        if self.tcp_ports:
            args += ["--relay-tcp", ",".join(f"127.0.0.1:{self.tcp_ports[n]}" for n in self.names)]
        if role in self.transports:
            args += ["--transport", self.transports[role]]
        if role == "provider":
            args += ["--expose", f"svc-sink=127.0.0.1:{self.sink.port}"]
            if not self._bound:  # the bind rule that lets the provider register
                self.ctl.allow_bind(peer_uri((pki / "agent-provider.crt").read_bytes()), "svc-sink")
                self._bound = True
        else:
            args += ["--consume", "svc-sink=127.0.0.1:0"]
        self._generation += 1
        proc = AgentProcess(self.work, f"{role}-{self._generation}", args).start()
        if role == "provider":
            self.provider = proc
        else:
            self.consumer = proc
        return proc

    def start(self) -> FailoverLab:
        """Controller, both relays, provider then consumer."""
        self.ctl.start()
        for name in self.names:
            self.relay(name)
        self.agent("provider")
        self.agent("consumer")
        return self

    def close(self) -> None:
        """Kill everything (idempotent)."""
        for proc in (self.consumer, self.provider, *self.relays.values()):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.kill()
        with contextlib.suppress(Exception):
            self.ctl.kill()
        with contextlib.suppress(Exception):
            self.sink.close()

    def __enter__(self) -> FailoverLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the transfer ---------------------------------------------------------

    def transfer(
        self,
        size: int,
        *,
        kill_at: int | None = None,
        action: str = "failover",
        kill_provider: bool = False,
        timeout: float = 300.0,
        seed: int = 1,
    ) -> TransferResult:
        """Send ``size`` bytes through the consumer to the sink; maybe kill relay A midway.

        ``action``: ``failover`` (A stays dead, agents move to B) or
        ``restart`` (A starts again on the same port). ``kill_provider``
        also SIGKILLs the provider agent (the peer never comes back).
        """
        assert self.consumer is not None
        records_before = len(self.sink.records)
        addr = self.consumer.consume_addr("svc-sink")
        digest = hashlib.sha256()
        result: dict[str, Any] = {}

        def send() -> None:
            rng = random.Random(seed)
            chunk = 1 * MiB
            try:
                with socket.create_connection(addr, timeout=timeout) as sock:
                    left = size
                    while left:
                        data = rng.randbytes(min(chunk, left))
                        digest.update(data)
                        sock.sendall(data)
                        left -= len(data)
                    sock.shutdown(socket.SHUT_WR)
                    answer = b""
                    while part := sock.recv(4096):
                        answer += part
                    result["answer"] = answer.decode(errors="replace")
            except OSError as exc:
                result["error"] = f"{type(exc).__name__}: {exc}"
            result["end"] = time.monotonic()

        t0 = time.monotonic()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        if kill_at is not None:
            deadline = time.monotonic() + timeout
            while True:
                recs = self.sink.records[records_before:]
                if recs and recs[0].received >= kill_at:
                    break
                if time.monotonic() > deadline or not sender.is_alive():
                    break
                time.sleep(0.005)
            self.relays["A"].kill()
            if kill_provider and self.provider is not None:
                self.provider.kill()
            result["killed"] = time.monotonic()
            if action == "restart":
                self.relay("A")
        sender.join(timeout)
        recs = self.sink.records[records_before:]
        rec = recs[0] if recs else SinkRecord()
        rec.done.wait(5)
        return TransferResult(
            size=size,
            sent_sha256=digest.hexdigest() if "error" not in result else "",
            echoed_sha256=str(result.get("answer", "")),
            received=rec.received,
            pause=rec.max_gap,
            duration=float(result.get("end", time.monotonic())) - t0,
            error=result.get("error"),
            killed_at=result.get("killed"),
            ended_at=result.get("end"),
        )
