"""Relay load benchmark: OutRelay's relay against a bare aioquic forwarder, same run.

    python bench/relay_bench.py            # 3 interleaved rounds, medians (a few minutes)
    python bench/relay_bench.py --quick    # 1 round, smaller sizes (about a minute)
    python bench/relay_bench.py --transport tcp --phases rss --rounds 1
                                           # the same phases, ours over TCP+TLS+yamux

What runs (all processes, loopback only, everything killed by PID at the end):

* **ours**: ``outrelay controller``, ``outrelay relay`` (``--no-policy``
  unless a ``--relay-arg --tenant=...`` is given), a provider process holding ``--providers``
  agent connections that HELLO and REGISTER service ``echo``, and a client
  process holding ``--clients`` agent connections that HELLO and then
  OPEN_STREAM ``echo`` (a random non-zero ORP stream id, like an agent).
  Every agent has its own certificate from the dev CA.
* **bare**: ``bench/quic_forwarder.py`` (plain aioquic, no policy, no ORP,
  no mTLS) with the same provider and client processes, minus the ORP
  preamble: a provider announces itself with one byte, a consumer just
  opens a stream.

Clients and providers are the same code on ``outrelay.transport`` for both
columns, so the difference is the relay. After the ORP preamble (ours) a
stream starts with one command byte the provider serves: ``E`` echo until
FIN, ``S`` count until FIN then answer the 8-byte count, ``G`` + 8-byte size
send that many bytes then FIN.

Metrics, measured in the client process:

* bulk MB/s consumer->provider (``S``, until the count comes back) and
  provider->consumer (``G``, until FIN);
* echo RTT of 64 bytes on one open stream, p50 / p99;
* stream opens/s, 1 and 32 concurrent clients (each on its own connection):
  open, write the opening + ``E`` + 1 byte + FIN, read the echoed byte and
  FIN: a complete stream life;
* during the 1-client open loop, datagrams the host sent per open
  (``/proc/net/snmp``) and CPU per open of the relay, provider and client
  processes (``/proc/PID/stat``): no target, they show where an open's
  time goes;
* relay RSS per idle spliced stream: VmRSS of the relay (forwarder) process
  with 1,000 idle echo streams open, each having echoed one byte, minus
  VmRSS just before, / 1,000. Measured first, on a fresh process.

Rounds alternate which system goes first; the table shows medians.

``--transport tcp`` runs "ours" over the relay's ``--listen-tcp`` listener
(TCP + TLS 1.3 + yamux, ``outrelay.transport.tcp``) instead of QUIC: the same
provider and client code, the same phases, on a ``TcpLink``. The bare
forwarder is QUIC only, so its column stays the QUIC baseline (the ratio
column then compares TCP ours against bare QUIC). ``--transport both`` runs
ours over QUIC and over TCP in the same run and prints both columns, e.g.
``--transport both --phases rss --rounds 1`` for the idle-stream RSS of each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVICE = "echo"
CHUNK = 64 * 1024
#: Client-side cap on unacknowledged bytes per stream while pushing bulk data.
SEND_HIGH = 1024 * 1024


# ---------------------------------------------------------------------------
# Client and provider side (child processes), on outrelay.transport
# ---------------------------------------------------------------------------


class Stream:
    """One stream of a :class:`Peer`: a buffer, a waiter, and send pacing."""

    __slots__ = ("peer", "id", "buf", "eof", "count", "sink", "echo", "waiter", "writable")

    def __init__(self, peer: Peer, stream_id: int) -> None:
        self.peer = peer
        self.id = stream_id
        self.buf = bytearray()
        self.eof = False
        self.count = 0  # bytes received
        self.sink = False  # count only, keep nothing
        self.echo = False  # send every received byte (and FIN) straight back
        self.waiter: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None

    def feed(self, data: bytes, fin: bool) -> None:
        self.count += len(data)
        if self.echo:
            self.peer.link.send(self.id, data, fin)
        elif not self.sink:
            self.buf += data
        if fin:
            self.eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        if self.eof:
            raise EOFError(f"stream {self.id} ended")
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter

    def send(self, data: bytes, fin: bool = False) -> None:
        self.peer.link.send(self.id, data, fin)

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._wait()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_frame(self) -> tuple[int, bytes]:
        from outrelay.orp import HEADER_SIZE, decode_header

        header = await self.read(HEADER_SIZE)
        _, ftype, _, length = decode_header(header)
        return ftype, await self.read(length) if length else b""

    async def wait_eof(self) -> None:
        while not self.eof:
            await self._wait()

    def start_echo(self) -> None:
        self.echo = True
        if self.buf or self.eof:
            self.peer.link.send(self.id, bytes(self.buf), self.eof)
            self.buf.clear()

    async def send_bulk(self, size: int) -> None:
        link, sid = self.peer.link, self.id
        chunk = b"\0" * CHUNK
        sent = 0
        while sent < size:
            while link.send_buffered(sid) >= SEND_HIGH:
                self.writable = asyncio.get_running_loop().create_future()
                await self.writable
            n = min(CHUNK, size - sent)
            sent += n
            link.send(sid, chunk if n == CHUNK else chunk[:n], sent >= size)


class Peer:
    """One client connection with per-stream buffers; every byte is granted on receipt."""

    def __init__(self, link: Any, on_incoming: Any = None) -> None:
        self.link = link
        self.streams: dict[int, Stream] = {}
        self.on_incoming = on_incoming
        link.on_event = self._on_event

    def open(self) -> Stream:
        sid = self.link.open_stream()
        st = self.streams[sid] = Stream(self, sid)
        return st

    def _on_event(self, link: Any, event: Any) -> None:
        from outrelay.transport import (
            ConnectionClosed,
            SendCapacityAvailable,
            StreamDataReceived,
            StreamReset,
        )

        kind = type(event)
        if kind is StreamDataReceived:
            sid = event.stream_id
            st = self.streams.get(sid)
            if st is None:
                st = self.streams[sid] = Stream(self, sid)
                if self.on_incoming is not None:
                    self.on_incoming(st)
            if event.data:
                link.grant(sid, len(event.data))
            st.feed(event.data, event.end_stream)
        elif kind is SendCapacityAvailable:
            st = self.streams.get(event.stream_id)
            if st is not None and st.writable is not None and not st.writable.done():
                st.writable.set_result(None)
        elif kind is StreamReset:
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.eof = True
                st._wake()
        elif kind is ConnectionClosed:
            for st in self.streams.values():
                st.eof = True
                st._wake()

    def forget(self, st: Stream) -> None:
        self.streams.pop(st.id, None)


def _transport_config(args: argparse.Namespace, name: str | None) -> Any:
    from outrelay.transport import TransportConfig

    if args.system == "bare":
        return TransportConfig(cert=None, key=None, ca=None, verify_peer=False)
    certs = Path(args.certs)
    return TransportConfig(
        cert=certs / f"{name}.crt", key=certs / f"{name}.key", ca=certs / "ca.crt"
    )


async def _dial(args: argparse.Namespace, name: str | None, on_incoming: Any = None) -> Peer:
    from outrelay.orp import FrameType, encode_message
    from outrelay.proto import orp_pb2

    host, _, port = args.addr.rpartition(":")
    if args.transport == "tcp":
        from outrelay.transport.tcp import connect_tcp

        link: Any = await connect_tcp(_transport_config(args, name), host, int(port), timeout=10.0)
    else:
        from outrelay.transport import connect

        link = await connect(host, int(port), _transport_config(args, name), timeout=10.0)
    peer = Peer(link, on_incoming)
    control = peer.open()
    assert control.id == 0
    if args.system == "bare":
        if on_incoming is not None:
            control.send(b"P")
        control.sink = True
        return peer
    uri = _uri_of(Path(args.certs) / f"{name}.crt")
    control.send(
        encode_message(FrameType.HELLO, orp_pb2.Hello(protocol_version="orp/1", agent_uri=uri))
    )
    ftype, _ = await asyncio.wait_for(control.read_frame(), 10)
    assert ftype == FrameType.HELLO_ACK, ftype
    if on_incoming is not None:
        control.send(encode_message(FrameType.REGISTER, orp_pb2.Register(service_name=SERVICE)))
        ftype, _ = await asyncio.wait_for(control.read_frame(), 10)
        assert ftype == FrameType.REGISTER_ACK, ftype
    control.sink = True  # STREAM_READY frames and the like: granted and dropped
    control.buf.clear()
    return peer


def _uri_of(cert: Path) -> str:
    from outrelay.identity import peer_uri

    return peer_uri(cert.read_bytes())


async def provider_main(args: argparse.Namespace) -> None:
    """Hold ``--providers`` connections; serve every stream the relay opens."""
    tasks: set[asyncio.Task[None]] = set()
    ours = args.system == "ours"

    async def serve(st: Stream) -> None:
        from outrelay.orp import FrameType, encode_frame

        try:
            if ours:
                ftype, _ = await st.read_frame()
                if ftype != FrameType.INCOMING_STREAM:
                    st.send(b"", True)
                    return
                st.send(encode_frame(FrameType.STREAM_ACCEPT))
            cmd = await st.read(1)
            if cmd == b"E":
                st.start_echo()
            elif cmd == b"S":
                st.sink = True
                count = len(st.buf)
                st.buf.clear()
                start = st.count
                await st.wait_eof()
                st.send(struct.pack("!Q", count + st.count - start), True)
            elif cmd == b"G":
                (size,) = struct.unpack("!Q", await st.read(8))
                await st.send_bulk(size)
            else:
                st.send(b"", True)
        except (EOFError, Exception):  # noqa: B014 - a broken stream ends its task only
            pass
        finally:
            if not st.echo:
                st.peer.forget(st)

    def incoming(st: Stream) -> None:
        if st.id % 4 != 1:
            return
        task = asyncio.create_task(serve(st))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    peers = [await _dial(args, f"provider-{i}", incoming) for i in range(args.providers)]
    print("ready", flush=True)
    # Echo streams forget themselves once finished both ways.
    while True:
        await asyncio.sleep(1.0)
        for peer in peers:
            for sid, st in list(peer.streams.items()):
                if st.echo and st.eof and sid != 0:
                    del peer.streams[sid]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _udp_out() -> int:
    """Datagrams this host sent so far (``/proc/net/snmp``, every process)."""
    head, values = [
        line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
        if line.startswith("Udp:")
    ][:2]  # fmt: skip
    return int(values[head.index("OutDatagrams")])


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def client_main(args: argparse.Namespace) -> None:
    """Run every measurement; print one JSON line of results."""
    from outrelay.orp import FrameType, encode_message
    from outrelay.proto import orp_pb2

    ours = args.system == "ours"
    peers = [await _dial(args, f"consumer-{i}") for i in range(args.clients)]

    def opening() -> bytes:
        if not ours:
            return b""
        msg = orp_pb2.OpenStream(target_service=SERVICE, stream_id=random.getrandbits(63) or 1)
        return encode_message(FrameType.OPEN_STREAM, msg)

    async def one_open(peer: Peer) -> None:
        st = peer.open()
        st.send(opening() + b"Ex", True)
        await st.wait_eof()
        peer.forget(st)
        if bytes(st.buf) != b"x":
            raise RuntimeError(f"echo stream got {bytes(st.buf)!r}")

    results: dict[str, float] = {}

    phases = set(args.phases.split(","))

    # 1. RSS per idle spliced stream, on the fresh process.
    for _ in range(20):
        await one_open(peers[0])
    await asyncio.sleep(0.5)
    before = _rss_kib(args.server_pid)
    idle: list[Stream] = []
    for i in range(args.idle if "rss" in phases else 0):
        st = peers[i % len(peers)].open()
        st.send(opening() + b"Ex")
        idle.append(st)
        if len(idle) % 100 == 0:
            await asyncio.wait_for(asyncio.gather(*(s.read(1) for s in idle[-100:])), 30)
    await asyncio.wait_for(asyncio.gather(*(s.read(1) for s in idle[len(idle) // 100 * 100 :])), 30)
    await asyncio.sleep(0.5)
    after = _rss_kib(args.server_pid)
    if "rss" in phases:
        results["rss_kib_per_stream"] = (after - before) / max(1, args.idle)
    for st in idle:
        st.send(b"", True)
    await asyncio.wait_for(asyncio.gather(*(st.wait_eof() for st in idle)), 30)
    for st in idle:
        st.peer.forget(st)
    idle.clear()

    # 2. Echo RTT, 64 bytes, one stream.
    if "rtt" in phases:
        await _rtt(args, peers[0], opening(), results)

    # 3. Opens per second, 1 and 32 concurrent clients.
    for concurrency in (1, 32) if "opens" in phases else ():
        done = 0

        async def worker(peer: Peer, deadline: float) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await asyncio.wait_for(one_open(peer), 10)
                done += 1

        measure = concurrency == 1  # CPU and datagrams per open: the 1-client loop only
        pids = {"relay": args.server_pid, "provider": args.provider_pid, "client": os.getpid()}
        cpu0 = {name: _cpu_s(pid) for name, pid in pids.items() if pid} if measure else {}
        udp0 = _udp_out() if measure else 0
        t0 = time.perf_counter()
        end = t0 + args.open_seconds
        await asyncio.gather(*(worker(peers[i % len(peers)], end) for i in range(concurrency)))
        results[f"opens_{concurrency}"] = done / (time.perf_counter() - t0)
        if measure and done:
            results["udp_per_open"] = (_udp_out() - udp0) / done
            # CPU per open of each process: where an open's time goes
            for name, before in cpu0.items():
                spent = _cpu_s(pids[name]) - before
                results[f"cpu_open_{name}"] = spent / done * 1e6

    # 4. Bulk, each way, one stream.
    if "bulk" in phases:
        await _bulk(args, peers[0], opening, results)

    print(json.dumps(results), flush=True)
    for peer in peers:
        peer.link.close()
    await asyncio.sleep(0.2)


async def _rtt(
    args: argparse.Namespace, peer: Peer, opening: bytes, results: dict[str, float]
) -> None:
    st = peer.open()
    st.send(opening + b"E")
    payload = b"r" * 64
    st.send(payload)
    await asyncio.wait_for(st.read(64), 10)
    rtts: list[float] = []
    for _ in range(args.rtt):
        t0 = time.perf_counter()
        st.send(payload)
        await asyncio.wait_for(st.read(64), 10)
        rtts.append(time.perf_counter() - t0)
    st.send(b"", True)
    await asyncio.wait_for(st.wait_eof(), 10)
    peer.forget(st)
    results["rtt_p50_ms"] = _percentile(rtts, 50) * 1e3
    results["rtt_p99_ms"] = _percentile(rtts, 99) * 1e3


async def _bulk(
    args: argparse.Namespace, peer: Peer, opening: Any, results: dict[str, float]
) -> None:
    size = args.bulk_mib * 1024 * 1024
    st = peer.open()
    t0 = time.perf_counter()
    st.send(opening() + b"S")
    await st.send_bulk(size)
    (count,) = struct.unpack("!Q", await asyncio.wait_for(st.read(8), 300))
    results["bulk_up_mbs"] = size / (time.perf_counter() - t0) / 1e6
    if count != size:
        raise RuntimeError(f"provider counted {count} of {size} bytes")
    await asyncio.wait_for(st.wait_eof(), 10)
    peer.forget(st)

    st = peer.open()
    st.sink = True
    t0 = time.perf_counter()
    st.send(opening() + b"G" + struct.pack("!Q", size), True)
    await asyncio.wait_for(st.wait_eof(), 300)
    results["bulk_down_mbs"] = size / (time.perf_counter() - t0) / 1e6
    if st.count != size:
        raise RuntimeError(f"received {st.count} of {size} bytes")
    peer.forget(st)


# ---------------------------------------------------------------------------
# Orchestration (the parent process)
# ---------------------------------------------------------------------------


class Procs:
    """Every child process we started, killed by PID at the end."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with open(log, "ab") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, **kw)
        self.children.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def kill_all(self) -> None:
        for proc in self.children:
            self.kill(proc)


def _read_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """The child's next stdout line, or RuntimeError after ``timeout`` / on exit."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise RuntimeError(f"{what}: no output after {timeout:.0f}s")
    finally:
        sel.close()
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise RuntimeError(f"{what} exited ({proc.wait(5)}) without output")
    return line


def _child(
    role: str, system: str, addr: str, args: argparse.Namespace, work: Path, transport: str
) -> list[str]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--role", role, "--system", system,
        "--addr", addr, "--certs", str(work / "certs"), "--transport", transport,
        "--providers", str(args.providers), "--clients", str(args.clients),
        "--idle", str(args.idle), "--rtt", str(args.rtt),
        "--open-seconds", str(args.open_seconds), "--bulk-mib", str(args.bulk_mib),
        "--phases", args.phases,
    ]  # fmt: skip
    return cmd


def run_system(
    system: str, args: argparse.Namespace, work: Path, procs: Procs, controller: str
) -> dict[str, float]:
    """One measurement pass over a fresh relay (or forwarder); returns the client's results.

    ``system``: ``ours`` (the relay over QUIC), ``tcp`` (the relay over its
    ``--listen-tcp`` listener) or ``bare`` (the aioquic forwarder).
    """
    pki = work / "pki"
    server: subprocess.Popen[bytes]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTRELAY_")}
    transport = "tcp" if system == "tcp" else "quic"
    if system in ("ours", "tcp"):
        ready = work / "relay-ready.json"
        ready.unlink(missing_ok=True)
        tenant = any(a.startswith("--tenant") for a in args.relay_arg)
        cmd = [
            sys.executable, "-m", "outrelay", "relay", "--listen", "127.0.0.1:0",
            "--debug-listen", "", "--cert", str(pki / "relay-r1.crt"),
            "--key", str(pki / "relay-r1.key"), "--ca", str(pki / "ca.crt"),
            "--controller", controller, "--ready-file", str(ready),
            *([] if tenant else ["--no-policy"]), *args.relay_arg,
            *(["--listen-tcp", "127.0.0.1:0"] if transport == "tcp" else []),
        ]  # fmt: skip
        server = procs.start(cmd, work / "relay.log", env=env, cwd=work)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("relay did not start; see relay.log")
            time.sleep(0.05)
        addr = json.loads(ready.read_text())[transport]
    else:
        cmd = [
            sys.executable, str(HERE / "quic_forwarder.py"), "--port", "0",
            "--cert", str(pki / "relay-r1.crt"), "--key", str(pki / "relay-r1.key"),
        ]  # fmt: skip
        server = procs.start(cmd, work / "forwarder.log", env=env)
        addr = "127.0.0.1:" + _read_line(server, 30, "forwarder").split()[1]
    child_system = "bare" if system == "bare" else "ours"
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        n = len(list(args.profile.glob(f"{system}-*.txt")))
        spy = [
            str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.pid),
            "--format", "raw", "--rate", "250", "-o", str(args.profile / f"{system}-{n}.txt"),
        ]  # fmt: skip
        spy_proc = procs.start(spy, work / "py-spy.log")
    try:
        provider = procs.start(
            _child("provider", child_system, addr, args, work, transport),
            work / "provider.log",
            env=env,
        )
        try:
            line = _read_line(provider, 60, "provider")
            assert line == "ready", line
            client = procs.start(
                [
                    *_child("client", child_system, addr, args, work, transport),
                    "--server-pid",
                    str(server.pid),
                    "--provider-pid",
                    str(provider.pid),
                ],
                work / "client.log",
                env=env,
            )
            try:
                result: dict[str, float] = json.loads(_read_line(client, 600, "client"))
            finally:
                procs.kill(client)
        finally:
            procs.kill(provider)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                procs.kill(server)
        if args.profile is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy_proc.wait(20)  # it writes its output once the server is gone
    return result


def issue_certs(work: Path, args: argparse.Namespace) -> None:
    """Dev bundle plus one agent certificate per provider and client connection."""
    from outrelay.controller.testing import dev_pki
    from outrelay.identity import Identity
    from outrelay.pki.ca import CA, cert_pem
    from outrelay.pki.csr import key_pem
    from outrelay.pki.files import write_private, write_public

    pki = dev_pki(work / "pki")
    certs = work / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    ca = CA.load(pki)
    rng = random.Random(5)
    names = [f"provider-{i}" for i in range(args.providers)]
    names += [f"consumer-{i}" for i in range(args.clients)]
    for name in names:
        ident = Identity.agent("acme", uuid.UUID(int=rng.getrandbits(128)))
        key, cert = ca.issue(ident)
        write_private(certs / f"{name}.key", key_pem(key))
        write_public(certs / f"{name}.crt", cert_pem(cert))


ROWS: list[tuple[str, str, str, str]] = [
    # key, label, better, target (ours/bare unless noted)
    ("bulk_up_mbs", "bulk consumer->provider MB/s", "high", ">= 1.0"),
    ("bulk_down_mbs", "bulk provider->consumer MB/s", "high", ">= 1.0"),
    ("rtt_p50_ms", "echo 64 B RTT p50 ms", "low", ""),
    ("rtt_p99_ms", "echo 64 B RTT p99 ms", "low", ""),
    ("opens_1", "stream opens/s, 1 client", "high", ">= 1.0"),
    ("opens_32", "stream opens/s, 32 clients", "high", ">= 1.0"),
    ("udp_per_open", "datagrams per open (1 client, host)", "low", ""),
    ("cpu_open_relay", "relay CPU us per open (1 client)", "low", ""),
    ("cpu_open_provider", "provider CPU us per open", "low", ""),
    ("cpu_open_client", "client CPU us per open", "low", ""),
    ("rss_kib_per_stream", "RSS KiB per idle spliced stream", "low", "<= 30 KB"),
]


#: Column heading of each system in the table.
HEADINGS = {"ours": "ours", "tcp": "ours/tcp", "bare": "bare"}


def table(runs: dict[str, list[dict[str, float]]]) -> tuple[str, bool]:
    """The result table (medians over rounds) and whether every target holds.

    One column per system that ran (``ours`` over QUIC, ``tcp`` = ours over
    TCP, ``bare``), then one ratio column per ours column against bare. A
    target is checked on every ours column.
    """
    mine = [s for s in ("ours", "tcp") if s in runs]
    systems = [*mine, "bare"]
    if mine == ["ours"]:
        ratios = ["ours/bare"]
    else:
        ratios = [f"{'quic' if s == 'ours' else s}/bare" for s in mine]
    heads = [HEADINGS[s] for s in systems] + ratios
    width = 34 + 10 * len(heads) + 10 + 4
    lines = [f"{'metric':34} " + " ".join(f"{h:>9}" for h in heads) + f" {'target':>9}  ok"]
    lines.append("-" * width)
    all_ok = True
    for key, label, _, target in ROWS:
        if not all(key in r for s in systems for r in runs[s]):
            continue
        value = {s: statistics.median(r[key] for r in runs[s]) for s in systems}
        bare = value["bare"]
        ratio = {s: value[s] / bare if bare else float("nan") for s in mine}
        oks: list[bool] = []
        for s in mine:
            if target.startswith(">="):
                oks.append(ratio[s] >= float(target.split()[1]))
            elif target.startswith("<="):
                oks.append(value[s] * 1024 / 1000 <= float(target.split()[1]))  # KiB -> KB
        ok: bool | None = all(oks) if oks else None
        all_ok = all_ok and ok is not False
        mark = "" if ok is None else ("yes" if ok else "NO")
        cells = [value[s] for s in systems] + [ratio[s] for s in mine]
        lines.append(
            f"{label:34} " + " ".join(f"{c:9.2f}" for c in cells) + f" {target:>9}  {mark}"
        )
    return "\n".join(lines), all_ok


def orchestrate(args: argparse.Namespace) -> int:
    from outrelay.controller.testing import ControllerProcess

    procs = Procs()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    mine = {"quic": ["ours"], "tcp": ["tcp"], "both": ["ours", "tcp"]}[args.transport]
    systems = [*mine, "bare"]
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        work = Path(tmp)
        controller: ControllerProcess | None = None
        try:
            issue_certs(work, args)
            controller = ControllerProcess(work, work / "pki", args=["--log-level", "warn"])
            controller.start()
            for i in range(args.providers):  # bind rules: who may provide SERVICE
                controller.allow_bind(_uri_of(work / "certs" / f"provider-{i}.crt"), SERVICE)
            for rnd in range(args.rounds):
                # rotate which system goes first (two systems: alternate)
                order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
                for system in order:
                    t0 = time.monotonic()
                    result = run_system(system, args, work, procs, controller.target)
                    runs[system].append(result)
                    shown = " ".join(f"{k}={v:.2f}" for k, v in result.items())
                    print(
                        f"round {rnd + 1} {system} ({time.monotonic() - t0:.0f}s): {shown}",
                        file=sys.stderr,
                        flush=True,
                    )
        except BaseException:
            for name in ("relay.log", "provider.log", "client.log", "forwarder.log"):
                path = work / name
                if path.exists() and path.stat().st_size:
                    tail = path.read_text(errors="replace")[-3000:]
                    print(f"--- {name} (tail)\n{tail}", file=sys.stderr)
            raise
        finally:
            procs.kill_all()
            if controller is not None:
                controller.kill()
    text, ok = table(runs)
    print(
        f"relay_bench: {args.rounds} round(s), bulk {args.bulk_mib} MiB, {args.rtt} RTTs, "
        f"opens {args.open_seconds:g}s, {args.idle} idle streams; medians"
        + ("" if args.transport == "quic" else f"; ours over {args.transport}")
    )
    print(text)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 8 MiB, 500 RTTs, 1 s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bulk-mib", type=int, default=32)
    parser.add_argument("--rtt", type=int, default=2000, help="echo round trips")
    parser.add_argument("--open-seconds", type=float, default=3.0)
    parser.add_argument("--idle", type=int, default=1000, help="idle spliced streams for RSS")
    parser.add_argument("--providers", type=int, default=10, help="provider connections")
    parser.add_argument("--clients", type=int, default=32, help="client connections")
    parser.add_argument(
        "--phases", default="rss,rtt,opens,bulk", help="comma list of rss,rtt,opens,bulk"
    )
    parser.add_argument(
        "--transport",
        choices=("quic", "tcp", "both"),
        default="quic",
        help="ours over QUIC (default), over the relay's --listen-tcp (TCP+TLS+yamux), or both",
    )
    parser.add_argument("--profile", type=Path, help="py-spy each server into this directory")
    parser.add_argument(
        "--relay-arg", action="append", default=[], help="extra argument for outrelay relay"
    )
    # child roles (internal)
    roles = ("orchestrate", "provider", "client")
    parser.add_argument("--role", choices=roles, default="orchestrate")
    parser.add_argument("--system", choices=("ours", "bare"), default="ours")
    parser.add_argument("--addr", default="")
    parser.add_argument("--certs", default="")
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--provider-pid", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.bulk_mib, args.rtt, args.open_seconds = 1, 8, 500, 1.0
    if args.role == "provider":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(provider_main(args))
        return 0
    if args.role == "client":
        asyncio.run(client_main(args))
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
