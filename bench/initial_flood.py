"""Spoofed-Initial flood against a real relay: GET latency and relay memory per ``--retry`` mode.

    python bench/initial_flood.py                  # never, auto, always; 20,000 at 5,000 pps
    python bench/initial_flood.py --modes auto --count 5000

What runs (all processes on 127.0.0.1, every one killed by PID at the end):
a controller, and per mode a fresh ``outrelay relay --retry MODE --tenant
acme``, a provider agent exposing a local HTTP backend as ``web``, and a
consumer agent listening for ``web`` (all through the CLI, rule
``allow-all`` added with ``outrelay policy add``). Once a GET through the
consumer works, a sender child process fires ``--count`` crafted client
Initials at ``--pps`` from ``--sockets`` UDP sockets (one source port each) at
the relay's QUIC port. Each Initial is what a real aioquic client sends
first (long header, ClientHello, padded to 1,200 bytes, its own random
8-byte DCID), made once before the first mode (``outrelay.transport.testing``).
The sender reads and discards whatever comes back (Retry packets).

Measured while the flood lasts (and 1 s after): a GET through the consumer
agent every 20 ms (10 s timeout each; a timeout counts as 10 s), the relay's
VmRSS every 50 ms and its VmHWM at the end, and the drops the kernel counted
on the relay's UDP socket (``/proc/net/udp``). One table, one row per mode.
Figures from this kind of machine are in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import http.server
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TENANT = "acme"
DATAGRAM = 1200
GET_EVERY = 0.020
GET_TIMEOUT = 10.0


# ---------------------------------------------------------------------------
# The sender (a child process, so its work never shares our GIL)
# ---------------------------------------------------------------------------


def sender_main(args: argparse.Namespace) -> int:
    """Send the Initials of ``--packets`` to ``--target`` at ``--pps``; print how many."""
    data = Path(args.packets).read_bytes()
    packets = [data[i : i + DATAGRAM] for i in range(0, len(data), DATAGRAM)][: args.count]
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    socks = []
    for _ in range(args.sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    tick = 0.005
    per_tick = max(1, round(args.pps * tick))
    sent = 0
    start = time.monotonic()
    while sent < len(packets):
        due = start + (sent / args.pps)
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for packet in packets[sent : sent + per_tick]:
            s = socks[sent % len(socks)]
            try:
                s.sendto(packet, target)
            except BlockingIOError:
                pass  # our own socket buffer is full: counted as sent (the kernel dropped it)
            sent += 1
        for s in socks:  # discard the replies (Retry packets)
            while True:
                try:
                    s.recv(65536)
                except (BlockingIOError, ConnectionRefusedError):
                    break
    elapsed = time.monotonic() - start
    for s in socks:
        s.close()
    print(f"{sent} {elapsed:.3f}", flush=True)
    return 0


def make_packets(path: Path, count: int) -> None:
    """Write ``count`` crafted client Initials (1,200 bytes each) to ``path``."""
    from outrelay.transport.testing import client_initial

    with path.open("wb") as out:
        for _ in range(count):
            datagram, _ = client_initial(("127.0.0.1", 4433))
            assert len(datagram) == DATAGRAM, len(datagram)
            out.write(datagram)


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------


def proc_status(pid: int, field: str) -> int:
    """``VmRSS``/``VmHWM`` of ``pid`` in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def udp_drops(port: int) -> int:
    """Drops the kernel counted on the UDP socket bound to ``port`` (``/proc/net/udp``)."""
    want = f":{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(want):
            return int(fields[-1])
    return 0


class _Hello(http.server.BaseHTTPRequestHandler):
    body = b"hello\n"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def get_once(url: str) -> float:
    """Seconds one GET took (``GET_TIMEOUT`` if it failed or timed out)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    t0 = time.monotonic()
    try:
        with opener.open(url, timeout=GET_TIMEOUT) as resp:
            resp.read()
            if resp.status != 200:
                return GET_TIMEOUT
    except OSError:
        return GET_TIMEOUT
    return time.monotonic() - t0


class Sampler(threading.Thread):
    """GETs every ``GET_EVERY`` s and the relay's VmRSS every 50 ms until stopped."""

    def __init__(self, url: str, pid: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.pid = pid
        self.latencies: list[float] = []
        self.rss_peak = 0
        self.stop = threading.Event()
        self._rss = threading.Thread(target=self._rss_loop, daemon=True)

    def _rss_loop(self) -> None:
        while not self.stop.is_set():
            self.rss_peak = max(self.rss_peak, proc_status(self.pid, "VmRSS"))
            self.stop.wait(0.05)

    def run(self) -> None:
        self._rss.start()
        while not self.stop.is_set():
            self.latencies.append(get_once(self.url))
            self.stop.wait(GET_EVERY)
        self._rss.join()


# ---------------------------------------------------------------------------
# The processes
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="never,auto,always", help="comma-separated")
    parser.add_argument("--count", type=int, default=20_000, help="Initials per mode")
    parser.add_argument("--pps", type=float, default=5_000.0, help="Initials per second")
    parser.add_argument("--sockets", type=int, default=64, help="source ports")
    parser.add_argument("--workdir", default="", help="keep logs here (default: a temp dir)")
    parser.add_argument("--relay-arg", action="append", default=[], help="extra relay argument")
    parser.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--packets", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sender:
        return sender_main(args)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("never", "auto", "always")]
    if bad or not modes:
        parser.error(f"--modes: want never, auto and/or always, got {args.modes!r}")
    if args.count <= 0 or args.pps <= 0 or args.sockets <= 0:
        parser.error("--count, --pps and --sockets must be positive")

    from outrelay.agent.testing import AgentProcess
    from outrelay.childproc import ComponentProcess, child_env
    from outrelay.controller.testing import ControllerProcess, dev_pki
    from outrelay.relay.testing import RelayProcess

    work = Path(args.workdir or tempfile.mkdtemp(prefix="outrelay-flood-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"initial flood: {args.count} spoofed Initials at {args.pps:g}/s from {args.sockets} "
        f"source ports, modes {','.join(modes)}; logs in {work}",
        flush=True,
    )
    packets = work / "initials.bin"
    if packets.exists() and packets.stat().st_size == args.count * DATAGRAM:
        print(f"  reusing the {args.count} Initials in {packets}", flush=True)
    else:
        t0 = time.monotonic()
        make_packets(packets, args.count)
        print(f"  crafted {args.count} Initials in {time.monotonic() - t0:.1f}s", flush=True)

    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    pki = work / "pki"
    if not (pki / "ca.crt").exists():
        dev_pki(pki, tenant=TENANT)
    (work / "controller.db").unlink(missing_ok=True)  # a rerun in the same --workdir
    ctl = ControllerProcess(work, pki)
    procs: list[ComponentProcess] = []
    rows: list[tuple[str, float, float, float, int, int, int, int, float]] = []
    try:
        ctl.start()
        admin_cert, admin_key = ctl.leaf("admin")
        added = subprocess.run(
            [
                sys.executable, "-m", "outrelay", "policy", "add", "--id", "allow-all",
                "--caller", "*", "--target", "*", "--decision", "allow",
                "--controller", ctl.target, "--cert", str(admin_cert), "--key", str(admin_key),
                "--ca", str(pki / "ca.crt"),
            ],
            env=child_env(), capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if added.returncode != 0:
            raise SystemExit(f"policy add failed: {added.stderr.strip()}")
        # the provider (dev bundle ...0001) may provide the service (bind rule)
        ctl.allow_bind("*", "web", tenant=TENANT)
        for mode in modes:
            relay = RelayProcess(
                work,
                cert=pki / "relay-r1.crt",
                key=pki / "relay-r1.key",
                ca=pki / "ca.crt",
                controller=ctl.target,
                args=["--relay-id", "r1", "--tenant", TENANT, "--retry", mode, *args.relay_arg],
                name=f"relay-{mode}",
            )
            procs.append(relay.start())
            host, port = relay.quic
            common = ["--relay", f"{host}:{port}", "--ca", str(pki / "ca.crt")]
            provider = AgentProcess(
                work,
                f"provider-{mode}",
                [
                    *common, "--cert", str(pki / "agent-provider.crt"),
                    "--key", str(pki / "agent-provider.key"),
                    "--expose", f"web=127.0.0.1:{backend.server_address[1]}",
                ],
            )  # fmt: skip
            procs.append(provider.start())
            consumer = AgentProcess(
                work,
                f"consumer-{mode}",
                [
                    *common, "--cert", str(pki / "agent-consumer.crt"),
                    "--key", str(pki / "agent-consumer.key"),
                    "--consume", "web=127.0.0.1:0",
                ],
            )  # fmt: skip
            procs.append(consumer.start())
            chost, cport = consumer.consume_addr("web")
            url = f"http://{chost}:{cport}/"
            deadline = time.monotonic() + 30
            while get_once(url) >= GET_TIMEOUT:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{mode}: no GET through the relay within 30s (see {work})")
            baseline = statistics.median(get_once(url) for _ in range(20))
            rss_before = proc_status(relay.pid, "VmRSS")
            drops_before = udp_drops(port)
            sampler = Sampler(url, relay.pid)
            sampler.start()
            sender = subprocess.run(
                [
                    sys.executable, str(Path(__file__).resolve()), "--sender",
                    "--target", f"{host}:{port}", "--packets", str(packets),
                    "--count", str(args.count), "--pps", str(args.pps),
                    "--sockets", str(args.sockets),
                ],
                env=child_env(), check=True, capture_output=True, text=True,
                timeout=args.count / args.pps * 3 + 60,
            )  # fmt: skip
            sent_s, elapsed_s = sender.stdout.split()
            time.sleep(1.0)  # the tail of the flood still being processed
            sampler.stop.set()
            sampler.join(GET_TIMEOUT + 5)
            lat = sorted(sampler.latencies)
            p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
            failed = sum(1 for x in lat if x >= GET_TIMEOUT)
            hwm = proc_status(relay.pid, "VmHWM")
            rows.append(
                (
                    mode, baseline, statistics.median(lat), p95, failed,
                    max(sampler.rss_peak, rss_before), hwm, udp_drops(port) - drops_before,
                    int(sent_s) / float(elapsed_s),
                )
            )  # fmt: skip
            print(
                f"  {mode}: {sent_s} sent in {elapsed_s}s, {len(lat)} GETs, "
                f"RSS before {rss_before / 2**20:.0f} MB",
                flush=True,
            )
            for done in (consumer, provider, relay):
                done.kill()
            procs.clear()
    finally:
        for proc in reversed(procs):
            proc.kill()
        ctl.kill()
        backend.shutdown()
        backend.server_close()

    print()
    header = (
        f"{'retry':<7} {'GET idle':>9} {'GET median':>11} {'GET p95':>9} {'failed':>7} "
        f"{'RSS peak':>9} {'VmHWM':>7} {'UDP drops':>10} {'Initials':>9} {'pps':>6}"
    )
    print(header)
    print("-" * len(header))
    for mode, base, med, p95, failed, peak, hwm, drops, pps in rows:
        print(
            f"{mode:<7} {base * 1e3:>7.1f}ms {med * 1e3:>9.1f}ms {p95 * 1e3:>7.1f}ms {failed:>7} "
            f"{peak / 2**20:>6.0f} MB {hwm / 2**20:>4.0f} MB {drops:>10} {args.count:>9} "
            f"{pps:>6.0f}"
        )
    print("\ntargets (default mode auto): GET median < 200 ms, relay peak RSS (VmHWM) < 150 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
