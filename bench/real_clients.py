"""Real, unmodified clients through OutRelay and through ``ssh -R``: one table.

    python bench/real_clients.py                    # 5 s per measurement, every column
    python bench/real_clients.py --quick            # 1 s per measurement
    python bench/real_clients.py --only quic,ssh    # some columns (direct,quic,tcp,ssh)
    python bench/real_clients.py --loop asyncio,uvloop --only quic   # the loops compared

Needs the Debian packages iperf3, redis-server, redis-tools, openssh-server
and openssh-client (a missing tool skips its rows or column, with a message).

What runs (everything on 127.0.0.1, every process killed by PID at the end):
an ``iperf3 -s`` and a ``redis-server`` (no persistence) as the backends;
then, per column, the clients ``iperf3 -c`` (``-t SECONDS -J``, and ``-R``)
and ``redis-benchmark`` (``-t get,set`` with 1 and 50 clients, ``-t ping``
with 1 client, ``--csv``) against:

* **direct**: the backends themselves;
* **OutRelay QUIC**: ``outrelay controller``, ``outrelay relay --tenant
  acme`` and two ``outrelay agent`` processes, all through the CLI with the
  dev PKI: a provider exposing ``iperf`` and ``redis`` (bind rules added) and
  a consumer listening for both; rule ``allow-all``. The clients dial the
  consumer's listeners. ``--loop`` is passed to the three components;
* **OutRelay TCP**: the same over the TCP + TLS + yamux transport (relay
  ``--listen-tcp``, agents ``--relay-tcp ... --transport tcp``), when
  ``outrelay relay --help`` has ``--listen-tcp``;
* **ssh -R**: a private ``sshd -D`` on an ephemeral loopback port (fresh host
  and user keys in a temp dir, a config that accepts only that key and only
  remote forwarding) and ``ssh -N -c aes128-gcm@openssh.com -R`` forwarding a
  port per backend; the clients dial sshd's forwarded ports.

The relay rows are the relay process (for ssh -R: every sshd process of the
private server, the listener and its session children): VmHWM at the end
of the column, and CPU seconds (``/proc/PID/stat`` utime + stime) spent during
the two iperf3 runs divided by the GB (1e9 bytes) the iperf3 receivers
counted. ``ours/ssh`` is OutRelay TCP (QUIC when there is no TCP column) over
ssh -R: above 1 is better for MB/s and rps, worse for ms, MB and s/GB.
A redis-benchmark run first calibrates with a short run so that each
measured run lasts about SECONDS. Figures from this kind of machine are in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import getpass
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TENANT = "acme"
KINDS = ("direct", "quic", "tcp", "ssh")
TITLES = {"direct": "direct", "quic": "OutRelay QUIC", "tcp": "OutRelay TCP", "ssh": "ssh -R"}
SSH_CIPHER = "aes128-gcm@openssh.com"
#: (key, label, higher is better); the rows of the table, in order.
ROWS: tuple[tuple[str, str, bool], ...] = (
    ("iperf_up", "iperf3 MB/s consumer->provider", True),
    ("iperf_down", "iperf3 MB/s provider->consumer", True),
    ("get_1", "redis GET rps, 1 client", True),
    ("set_1", "redis SET rps, 1 client", True),
    ("get_50", "redis GET rps, 50 clients", True),
    ("set_50", "redis SET rps, 50 clients", True),
    ("ping_p50", "redis PING p50 ms, 1 client", False),
    ("hwm", "relay VmHWM MB", False),
    ("cpu_gb", "relay CPU s per GB moved", False),
)
TOOLS = {
    "iperf3": "iperf3",
    "redis-server": "redis-server",
    "redis-benchmark": "redis-tools",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Processes, ports, /proc
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Something listens on TCP 127.0.0.1:``port`` (``/proc/net/tcp``, no connection made)."""
    want = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == want and fields[3] == "0A":
            return True
    return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (``/proc/PID/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of ``pids`` (gone ones count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def vm_hwm(pids: Sequence[int]) -> int:
    """Sum of VmHWM of ``pids`` in bytes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
    return total


class Procs:
    """Every child we started, killed by PID (newest first) on :meth:`close`."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []

    def popen(self, argv: Sequence[str], log: Path, **kw: object) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **kw
            )  # type: ignore[call-overload]
        self.popens.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            below = descendants(proc.pid)[1:]
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            for pid in below:  # e.g. sshd session children
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if proc in self.popens:
            self.popens.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self.popens)):
            self.kill(proc)


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


@dataclass
class Column:
    kind: str
    title: str
    loop: str = ""
    values: dict[str, float] = field(default_factory=dict)
    note: str = ""


def iperf(port: int, seconds: float, reverse: bool) -> tuple[float, int]:
    """(MB/s, bytes) the receiving side counted in one ``iperf3 -c`` run."""
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", f"{seconds:g}", "-J"]
    if reverse:
        argv.append("-R")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"iperf3 exit {done.returncode}: {done.stderr.strip()}") from None
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    received = report["end"]["sum_received"]
    return received["bits_per_second"] / 8 / 1e6, int(received["bytes"])


def redis_bench(port: int, tests: str, clients: int, n: int) -> dict[str, dict[str, float]]:
    """``redis-benchmark --csv`` -> {test: {"rps": ..., "p50_latency_ms": ...}}."""
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", tests]
    argv += ["-c", str(clients), "-n", str(n), "--csv"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"redis-benchmark exit {done.returncode}: {done.stderr.strip()}")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    out = {}
    for row in rows:
        out[row["test"]] = {k: float(v) for k, v in row.items() if k != "test"}
    if not out:
        raise RuntimeError(f"redis-benchmark printed no result: {done.stdout!r}")
    return out


def redis_timed(port: int, tests: str, clients: int, seconds: float) -> dict[str, dict[str, float]]:
    """A short calibration run, then one of about ``seconds`` per test."""
    probe = redis_bench(port, tests, clients, max(200, 20 * clients))
    rps = min(r["rps"] for r in probe.values())
    n = int(min(max(rps * seconds, 20 * clients, 500), 5_000_000))
    return redis_bench(port, tests, clients, n)


def redis_ping(port: int, timeout: float = 2.0) -> bool:
    """One PING answered with +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def measure(
    col: Column, iperf_port: int | None, redis_port: int | None, seconds: float,
    relay_pids: Callable[[], list[int]] | None,
) -> None:  # fmt: skip
    """Fill ``col.values`` (each row that fails or has no tool stays empty, with a message)."""
    moved = 0
    cpu = 0.0
    if iperf_port is not None:
        for key, reverse in (("iperf_up", False), ("iperf_down", True)):
            before = cpu_seconds(relay_pids()) if relay_pids else 0.0
            try:
                col.values[key], nbytes = iperf(iperf_port, seconds, reverse)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                say(f"  {col.title}: {key} failed: {exc}")
                continue
            if relay_pids:
                cpu += cpu_seconds(relay_pids()) - before
            moved += nbytes
            say(f"  {col.title}: {key} {col.values[key]:,.1f} MB/s")
    if redis_port is not None:
        try:
            for clients in (1, 50):
                res = redis_timed(redis_port, "get,set", clients, seconds)
                col.values[f"get_{clients}"] = res["GET"]["rps"]
                col.values[f"set_{clients}"] = res["SET"]["rps"]
                say(
                    f"  {col.title}: GET/SET {clients} client(s) "
                    f"{res['GET']['rps']:,.0f}/{res['SET']['rps']:,.0f} rps"
                )
            res = redis_timed(redis_port, "ping", 1, seconds)
            ping = res.get("PING_MBULK") or next(iter(res.values()))
            col.values["ping_p50"] = ping["p50_latency_ms"]
            say(f"  {col.title}: PING p50 {col.values['ping_p50']:.3f} ms")
        except (RuntimeError, subprocess.TimeoutExpired, KeyError) as exc:
            say(f"  {col.title}: redis-benchmark failed: {exc}")
    if relay_pids:
        col.values["hwm"] = vm_hwm(relay_pids()) / 2**20
        if moved:
            col.values["cpu_gb"] = cpu / (moved / 1e9)


# ---------------------------------------------------------------------------
# The columns
# ---------------------------------------------------------------------------


@dataclass
class Backends:
    iperf: int | None
    redis: int | None


def start_backends(procs: Procs, work: Path, have: set[str]) -> Backends:
    iperf_port = redis_port = None
    if "iperf3" in have:
        iperf_port = free_port()
        procs.popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)], work / "iperf3.log")
        wait_until(lambda: listening(iperf_port), 10, "iperf3 -s")
    if "redis-server" in have:
        redis_port = free_port()
        procs.popen(
            [
                "redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(work), "--logfile", "",
            ],
            work / "redis.log",
        )  # fmt: skip
        wait_until(lambda: redis_ping(redis_port), 10, "redis-server")
    return Backends(iperf_port, redis_port)


def has_tcp_transport() -> bool:
    """``outrelay relay --help`` lists ``--listen-tcp`` (the TCP + TLS + yamux transport)."""
    from outrelay.childproc import child_env, outrelay_argv

    helps = []
    for cmd in ("relay", "agent"):
        done = subprocess.run(
            outrelay_argv([cmd, "--help"]), capture_output=True, text=True, env=child_env(),
            timeout=60, check=False,
        )  # fmt: skip
        helps.append(done.stdout)
    return "--listen-tcp" in helps[0] and "--relay-tcp" in helps[1]


class OutRelay:
    """A controller for the run; per column a relay, a provider and a consumer agent."""

    def __init__(self, work: Path, procs: Procs, backends: Backends) -> None:
        from outrelay.controller.testing import ControllerProcess, dev_pki

        self.work = work
        self.procs = procs
        self.backends = backends
        pki = work / "pki"
        self.pki = pki if (pki / "ca.crt").exists() else dev_pki(pki, tenant=TENANT)
        for name in ("controller.db", "controller.db-wal", "controller.db-shm"):
            (work / name).unlink(missing_ok=True)  # a rerun in the same --workdir
        self.ctl = ControllerProcess(work, self.pki)
        try:
            self.ctl.start()
            self._policy()
        except BaseException:
            self.ctl.kill()  # nobody else holds it yet
            raise

    def _policy(self) -> None:
        from outrelay.childproc import child_env

        admin_cert, admin_key = self.ctl.leaf("admin")
        added = subprocess.run(
            [
                sys.executable, "-m", "outrelay", "policy", "add", "--id", "allow-all",
                "--caller", "*", "--target", "*", "--decision", "allow",
                "--controller", self.ctl.target, "--cert", str(admin_cert),
                "--key", str(admin_key), "--ca", str(self.pki / "ca.crt"),
            ],
            env=child_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if added.returncode != 0:
            raise RuntimeError(f"policy add failed: {added.stderr.strip()}")
        self.ctl.allow_bind("*", "iperf", "redis", tenant=TENANT)

    @contextlib.contextmanager
    def column(self, transport: str, loop: str) -> Iterator[tuple[Backends, list[int]]]:
        """Relay + agents over ``transport``; yields the consumer's ports and the relay's PID."""
        from outrelay.agent.testing import AgentProcess
        from outrelay.relay.testing import RelayProcess

        pki = self.pki
        tag = f"{transport}-{loop}"
        loop_args = ["--loop", loop]
        relay_args = ["--relay-id", "r1", "--tenant", TENANT, *loop_args]
        tcp_port = free_port() if transport == "tcp" else 0
        if tcp_port:
            relay_args += ["--listen-tcp", f"127.0.0.1:{tcp_port}"]
        relay = RelayProcess(
            self.work, cert=pki / "relay-r1.crt", key=pki / "relay-r1.key", ca=pki / "ca.crt",
            controller=self.ctl.target, args=relay_args, name=f"relay-{tag}",
        )  # fmt: skip
        started = [relay]
        try:
            relay.start()
            host, port = relay.quic
            common = ["--relay", f"{host}:{port}", "--ca", str(pki / "ca.crt"), *loop_args]
            if tcp_port:
                common += ["--relay-tcp", f"127.0.0.1:{tcp_port}", "--transport", "tcp"]
            expose = []
            if self.backends.iperf:
                expose += ["--expose", f"iperf=127.0.0.1:{self.backends.iperf}"]
            if self.backends.redis:
                expose += ["--expose", f"redis=127.0.0.1:{self.backends.redis}"]
            provider = AgentProcess(
                self.work, f"provider-{tag}",
                [*common, "--cert", str(pki / "agent-provider.crt"),
                 "--key", str(pki / "agent-provider.key"), *expose],
            )  # fmt: skip
            started.append(provider)
            provider.start()
            consume = ["--consume", "iperf=127.0.0.1:0", "--consume", "redis=127.0.0.1:0"]
            consumer = AgentProcess(
                self.work, f"consumer-{tag}",
                [*common, "--cert", str(pki / "agent-consumer.crt"),
                 "--key", str(pki / "agent-consumer.key"), *consume],
            )  # fmt: skip
            started.append(consumer)
            consumer.start()
            ports = Backends(consumer.consume_addr("iperf")[1], consumer.consume_addr("redis")[1])
            if self.backends.redis:  # the provider's REGISTER reached the relay
                wait_until(lambda: redis_ping(ports.redis or 0), 30, f"{tag}: redis via relay")
            yield (
                Backends(
                    ports.iperf if self.backends.iperf else None,
                    ports.redis if self.backends.redis else None,
                ),
                [relay.pid],
            )
        finally:
            for proc in reversed(started):
                proc.kill()

    def close(self) -> None:
        self.ctl.kill()


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_ed25519
PidFile none
AuthorizedKeysFile {dir}/authorized_keys
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding remote
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
GatewayPorts no
PrintMotd no
LogLevel ERROR
"""


@contextlib.contextmanager
def ssh_column(work: Path, procs: Procs, backends: Backends) -> Iterator[tuple[Backends, int]]:
    """A private sshd and ``ssh -N -R`` per backend; yields the forwarded ports and sshd's PID."""
    d = work / "ssh"
    d.mkdir(mode=0o700, exist_ok=True)
    for name in ("host_ed25519", "user_ed25519"):
        if not (d / name).exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                check=True, timeout=30, capture_output=True,
            )  # fmt: skip
    (d / "authorized_keys").write_text((d / "user_ed25519.pub").read_text())
    user = getpass.getuser()
    port = free_port()
    (d / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=d, user=user))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    sshd = procs.popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")], work / "sshd.log"
    )
    client = None
    try:
        wait_until(lambda: listening(port) or sshd.poll() is not None, 10, "sshd")
        if sshd.poll() is not None:
            raise RuntimeError(f"sshd exited {sshd.returncode}: see {work / 'sshd.log'}")
        fwd = Backends(
            free_port() if backends.iperf else None, free_port() if backends.redis else None
        )
        argv = [
            "ssh", "-F", "/dev/null", "-i", str(d / "user_ed25519"), "-p", str(port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
            "-c", SSH_CIPHER, "-N",
        ]  # fmt: skip
        for remote, local in ((fwd.iperf, backends.iperf), (fwd.redis, backends.redis)):
            if remote:
                argv += ["-R", f"127.0.0.1:{remote}:127.0.0.1:{local}"]
        client = procs.popen([*argv, f"{user}@127.0.0.1"], work / "ssh.log")
        for p in (fwd.iperf, fwd.redis):
            if p:
                wait_until(
                    lambda p=p: listening(p) or client.poll() is not None, 15, "ssh -R forward"
                )
        if client.poll() is not None:
            raise RuntimeError(f"ssh exited {client.returncode}: see {work / 'ssh.log'}")
        yield fwd, sshd.pid
    finally:
        if client is not None:
            procs.kill(client)
        procs.kill(sshd)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


def fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key == "ping_p50":
        return f"{value:.3f}"
    if key in ("iperf_up", "iperf_down", "cpu_gb"):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def ratio(ours: float | None, ssh: float | None) -> str:
    if not ours or not ssh:
        return "-"
    r = ours / ssh
    return f"{r:.3f}x" if r < 0.1 else f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def table(columns: list[Column], ours: Column | None, ssh: Column | None) -> str:
    heads = ["metric", *(c.title for c in columns)]
    with_ratio = ours is not None and ssh is not None
    if with_ratio:
        assert ours is not None
        heads.append(f"ours/ssh: {ours.title.removeprefix('OutRelay ')}")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for key, label, _ in ROWS:
        cells = [label, *(fmt(key, c.values.get(key)) for c in columns)]
        if with_ratio:
            assert ours is not None and ssh is not None
            cells.append(ratio(ours.values.get(key), ssh.values.get(key)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model or platform.machine()}), Linux {platform.release()}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--quick", action="store_true", help="1 s measurements")
    parser.add_argument(
        "--only", default=",".join(KINDS), help="comma-separated columns: direct,quic,tcp,ssh"
    )
    from outrelay.loop import DEFAULT as default_loop

    parser.add_argument(
        "--loop",
        default=default_loop,
        help="--loop of the OutRelay components; comma-separated for a column per loop "
        "(e.g. asyncio,uvloop)",
    )
    parser.add_argument("--workdir", default="", help="keep logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    seconds = 1.0 if args.quick else args.seconds
    if seconds <= 0:
        parser.error("--seconds must be positive")
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        parser.error(f"--only: want some of {','.join(KINDS)}, got {args.only!r}")
    loops = [x.strip() for x in args.loop.split(",") if x.strip()]
    if not loops or any(x not in ("auto", "asyncio", "uvloop") for x in loops):
        parser.error(f"--loop: want auto, asyncio and/or uvloop, got {args.loop!r}")

    have = {tool for tool in TOOLS if shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()}
    for tool in sorted(set(TOOLS) - have):
        say(f"{tool} not found (Debian package {TOOLS[tool]}): skipping what needs it")
    if "redis-server" not in have or "redis-benchmark" not in have:
        have -= {"redis-server", "redis-benchmark"}
    if "ssh" in kinds and not {"sshd", "ssh", "ssh-keygen"} <= have:
        say("ssh -R column skipped: needs sshd, ssh and ssh-keygen")
        kinds.remove("ssh")
    if "tcp" in kinds and not has_tcp_transport():
        say("OutRelay TCP column skipped: this outrelay has no --listen-tcp / --relay-tcp")
        kinds.remove("tcp")
    if "iperf3" not in have and "redis-server" not in have:
        say("neither iperf3 nor redis is installed: nothing to measure")
        return 1

    work = Path(args.workdir or tempfile.mkdtemp(prefix="outrelay-real-"))
    work.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = loadavg()
    say(f"real clients: {seconds:g} s runs, columns {','.join(kinds)}, loop {args.loop}; "
        f"logs in {work}")  # fmt: skip
    procs = Procs()
    outrelay: OutRelay | None = None
    columns: list[Column] = []
    try:
        backends = start_backends(procs, work, have)
        for kind in kinds:
            if kind == "direct":
                col = Column(kind, TITLES[kind])
                say(f"{col.title} ...")
                measure(col, backends.iperf, backends.redis, seconds, None)
                columns.append(col)
            elif kind in ("quic", "tcp"):
                if outrelay is None:
                    outrelay = OutRelay(work, procs, backends)
                for loop in loops:
                    title = TITLES[kind] + (f" ({loop})" if len(loops) > 1 else "")
                    col = Column(kind, title, loop)
                    say(f"{col.title} ...")
                    try:
                        with outrelay.column(kind, loop) as (ports, pids):
                            measure(col, ports.iperf, ports.redis, seconds, lambda p=pids: p)
                    except RuntimeError as exc:  # NotReadyError too
                        say(f"{col.title} column skipped: {exc}")
                        continue
                    columns.append(col)
            else:
                col = Column(kind, TITLES[kind])
                say(f"{col.title} ...")
                try:
                    with ssh_column(work, procs, backends) as (ports, sshd_pid):
                        measure(
                            col, ports.iperf, ports.redis, seconds,
                            lambda: descendants(sshd_pid),
                        )  # fmt: skip
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    say(f"ssh -R column skipped: {exc}")
                    continue
                columns.append(col)
    finally:
        if outrelay is not None:
            outrelay.close()
        procs.close()

    ours = next((c for c in columns if c.kind == "tcp"), None) or next(
        (c for c in columns if c.kind == "quic"), None
    )
    ssh = next((c for c in columns if c.kind == "ssh"), None)
    print()
    print(f"{stamp}; {machine()}; load average {load_before} before, {loadavg()} after;")
    from outrelay.loop import resolve

    used = ",".join(f"{x} (= {resolve(x)})" if x == "auto" else x for x in loops)
    print(f"{seconds:g} s per measurement; OutRelay --loop {used}; ssh -c {SSH_CIPHER}")
    print()
    print(table(columns, ours, ssh))
    print()
    print("ours/ssh: above 1 is better for MB/s and rps, worse for ms, MB and s/GB.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
