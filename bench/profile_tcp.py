"""Where the TCP path's time goes: py-spy profiles of the relay and the provider under bulk load.

    python bench/profile_tcp.py                 # 1 GiB each measured run (about a minute)
    python bench/profile_tcp.py --gib 0.25      # smaller
    python bench/profile_tcp.py --no-native     # Python frames only

Needs iperf3 (Debian package iperf3) and py-spy (``pip install py-spy``, on
PyPI) next to this interpreter or on PATH.

What runs (everything on 127.0.0.1, every process killed by PID at the end):
``outrelay controller``, ``outrelay relay --tenant acme --listen-tcp``, a
provider agent exposing an ``iperf3 -s`` and a consumer agent listening for
it, both ``--relay-tcp ... --transport tcp``, through the CLI with the dev
PKI, a policy rule ``allow-all`` and a bind rule (the same setup as the
OutRelay TCP column of ``bench/real_clients.py``, whose class it reuses).
Then, each direction through one stream (``iperf3 -c -n SIZE``, ``-R`` for
provider->consumer):

1. **unprofiled**: throughput the iperf3 receiver counted and the CPU seconds
   (``/proc/PID/stat`` utime + stime) of the relay, provider and consumer
   per GB (1e9 bytes) moved;
2. **profiled** (consumer->provider only, unless ``--both-profiled``): the
   same transfer with ``py-spy record --format raw --native`` attached to
   the relay and to the provider at once (stopped with SIGINT when the
   transfer ends, which makes py-spy write its file), then for each the top
   functions by self time (the innermost frame of a sample) and by total
   time (the function is anywhere on the stack), as a share of the samples.
   py-spy samples only threads that are not idle (not blocked in epoll),
   so the shares are of the process's busy time; the profiled run's
   throughput is lower than the unprofiled one (py-spy pauses the process
   to read its stack).

Frames are grouped by function (the line number dropped); native frames
(``--native``: OpenSSL, libc, the Cython mux) show their symbol and library.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import real_clients as rc  # noqa: E402  (bench/ is not a package)

#: A raw py-spy line: ``frame;frame;...;frame COUNT`` (outermost first).
RAW_LINE = re.compile(r"^(.*) (\d+)$")
#: ``function (file:line)`` -> ``function (file)``.
LINE_NO = re.compile(r":\d+\)$")


def py_spy() -> str:
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def frame_name(frame: str) -> str:
    """A frame without its line number, with the file shortened to its last two parts."""
    frame = LINE_NO.sub(")", frame.strip())
    m = re.match(r"^(.*) \((.*)\)$", frame)
    if not m:
        return frame
    func, where = m.groups()
    parts = where.split("/")
    return f"{func} ({'/'.join(parts[-2:])})"


#: A frame on every stack of the event-loop thread (asyncio's runner; uvloop's too).
LOOP_THREAD = "Runner.run (asyncio/runners.py)"
#: Innermost frames of a sample that waits for I/O (the loop's poll).
IDLE = ("epoll_wait", "select_epoll_poll", "EpollSelector.select", "Loop__poll", "uv__io_poll")
#: Frames up to and including these are the loop's own entry chain (dropped from "total").
LOOP_ENTRY = ("BaseEventLoop._run_once", "Loop.run_forever", "Loop.run_until_complete")


#: Self time by kind (exclusive, first match wins): (label, substrings of the innermost frame).
SELF_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("socket syscalls (send/recv; loopback TCP in the kernel)",
     ("send (libc", "recv (libc", "sendmsg (libc", "recvmsg (libc", "writev (libc")),
    ("OpenSSL (AES-GCM, records)", ("libssl", "libcrypto")),
    ("yamux (Cython _yamux / pure twin)", ("_yamux", "mux/_session_py")),
    ("ssl / _ssl / _socket glue", ("_ssl.c", "socketmodule.c", "(ssl.py)")),
    ("asyncio + selectors (Python and C)", ("asyncio/", "selectors.py", "_asynciomodule")),
    # py-spy names some relay modules by file only (server.py, splice.py, core.py, control.py)
    ("outrelay Python (link, relay/agent cores, metrics)",
     ("transport/", "agent/", "observe/", "resume/", "orp/", "(server.py)", "(splice.py)",
      "(core.py)", "(control.py)", "__create_fn__")),
    ("libc other (memcpy/memmove, malloc; unnamed)", ("libc.so",)),
    ("CPython interpreter / objects", ("libpython", "object.h", ".c)", ".h)")),
)  # fmt: skip
#: Inclusive time of a few subsystems (a frame anywhere on the stack; they overlap).
TOTAL_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("TLS decrypt (SSLObject.read)", ("SSLObject.read ",)),
    ("TLS encrypt (SSLObject.write)", ("SSLObject.write ",)),
    ("socket send() incl. kernel", ("sock_send ",)),
    ("socket recv() incl. kernel", ("sock_recv",)),
    ("yamux session (receive_data, data_to_send, send, grant, ...)", ("_yamux", "mux/_session_py")),
    (
        "TcpLink / _TcpProtocol (the transport shell and what it calls)",
        ("TcpLink.", "_TcpProtocol."),
    ),
    (
        "relay core (Relay, RelayCore, Splice, ControlFlow)",
        ("Relay._", "RelayCore.", "Splice.", "ControlFlow."),
    ),
    ("agent local-socket bridge (agent/bridge.py)", ("agent/bridge.py",)),
    ("metrics (observe/)", ("observe/",)),
)


@dataclass
class Profile:
    samples: int = 0  # every sample of the event-loop thread
    idle: int = 0  # ... of them waiting in epoll
    other_threads: int = 0  # samples of other threads (executor, gRPC), not counted below
    by_self: list[tuple[str, int]] = field(default_factory=list)
    by_total: list[tuple[str, int]] = field(default_factory=list)
    self_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    total_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    other_frames: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def busy(self) -> int:
        return self.samples - self.idle


def summarize(raw: Path, top: int) -> Profile:
    """Top functions of the event-loop thread's busy samples in a py-spy raw file."""
    self_t: collections.Counter[str] = collections.Counter()
    total_t: collections.Counter[str] = collections.Counter()
    prof = Profile()
    for line in raw.read_text(errors="replace").splitlines():
        m = RAW_LINE.match(line)
        if not m:
            continue
        stack, count = m.group(1).split(";"), int(m.group(2))
        names = [frame_name(f) for f in stack if f]
        if not names:
            continue
        if LOOP_THREAD not in names:
            prof.other_threads += count
            continue
        prof.samples += count
        if any(name.startswith(IDLE) for name in names[-4:]):
            prof.idle += count
            continue
        self_t[names[-1]] += count
        inner = names[-1]
        kind = next((k for k, keys in SELF_KINDS if any(x in inner for x in keys)), "other")
        prof.self_kinds[kind] += count
        if kind == "other":
            prof.other_frames[inner] += count
        for label, keys in TOTAL_KINDS:
            if any(x in name for name in names for x in keys):
                prof.total_kinds[label] += count
        cut = max((i for i, n in enumerate(names) if n.startswith(LOOP_ENTRY)), default=-1)
        for name in set(names[cut + 1 :]):
            total_t[name] += count
    prof.by_self = self_t.most_common(top)
    prof.by_total = total_t.most_common(top)
    return prof


def show(title: str, raw: Path, top: int, seconds: float, rate: int) -> None:
    prof = summarize(raw, top)
    expected = seconds * rate
    print(
        f"\n## {title}: event-loop thread {prof.samples} samples in {seconds:.1f} s at {rate}/s "
        f"(~{prof.samples / expected:.0%} of wall time sampled: busy {prof.busy}, "
        f"idle in epoll {prof.idle}); other threads {prof.other_threads} (ignored)"
    )
    if not prof.busy:
        return
    print("\nself time by kind, % of busy samples")
    for kind, n in prof.self_kinds.most_common():
        print(f"  {100 * n / prof.busy:5.1f}%  {kind}")
    print("\ninclusive time of subsystems, % of busy samples (they overlap)")
    for label, _ in TOTAL_KINDS:
        print(f"  {100 * prof.total_kinds[label] / prof.busy:5.1f}%  {label}")
    for label, rows in (("self", prof.by_self), ("total (below the loop)", prof.by_total)):
        print(f"\ntop {top} by {label} time, % of busy samples")
        for name, n in rows:
            print(f"  {100 * n / prof.busy:5.1f}%  {name}")


def transfer(port: int, size: int, reverse: bool) -> tuple[float, int]:
    """(MB/s, bytes) the iperf3 receiver counted moving ``size`` bytes through one stream."""
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", str(size), "-J"]
    if reverse:
        argv.append("-R")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    import json

    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"iperf3 exit {done.returncode}: {done.stderr.strip()}") from None
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    received = report["end"]["sum_received"]
    return received["bits_per_second"] / 8 / 1e6, int(received["bytes"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB per transfer")
    parser.add_argument("--top", type=int, default=20, help="functions shown per table")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--no-native", action="store_true", help="Python frames only")
    parser.add_argument("--both-profiled", action="store_true", help="profile -R as well")
    parser.add_argument("--loop", default="asyncio", help="--loop of the OutRelay components")
    parser.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        help="extra argument for both agents, e.g. --agent-arg=--ring-max=64MiB",
    )
    parser.add_argument(
        "--yamux-window",
        default="",
        help="experiment: the yamux receive window every TcpLink offers per stream (e.g. 4MiB; "
        "default: the product's, 256 KiB), set through a sitecustomize hook in the workdir",
    )
    parser.add_argument("--workdir", default="", help="keep logs and raw profiles here")
    args = parser.parse_args(argv)
    if not shutil.which("iperf3"):
        rc.say("iperf3 not found (Debian package iperf3)")
        return 1
    spy = py_spy()
    if args.agent_arg:
        extra_agent_args(args.agent_arg)
    size = int(args.gib * 2**30)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="outrelay-prof-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.yamux_window:
        window_hook(work, parse_size(args.yamux_window))
    procs = rc.Procs()
    outrelay: rc.OutRelay | None = None
    profiles: list[tuple[str, Path, float]] = []
    rows: list[str] = []
    try:
        backends = rc.start_backends(procs, work, {"iperf3"})
        outrelay = rc.OutRelay(work, procs, backends)
        with outrelay.column("tcp", args.loop) as (ports, relay_pids):
            assert ports.iperf is not None
            pids = {"relay": relay_pids[0], **agent_pids(work)}
            for reverse in (False, True):
                direction = "provider->consumer" if reverse else "consumer->provider"
                cpu0 = {k: rc.cpu_seconds([p]) for k, p in pids.items()}
                mbs, moved = transfer(ports.iperf, size, reverse)
                gb = moved / 1e9
                cpu = {k: (rc.cpu_seconds([p]) - cpu0[k]) / gb for k, p in pids.items()}
                rows.append(
                    f"{direction:20} {mbs:8.1f} MB/s  CPU s/GB: relay {cpu['relay']:.2f}, "
                    f"provider {cpu['provider']:.2f}, consumer {cpu['consumer']:.2f}"
                )
                rc.say(rows[-1])
            for reverse in (False, True) if args.both_profiled else (False,):
                direction = "provider->consumer" if reverse else "consumer->provider"
                spies = []
                for name in ("relay", "provider"):
                    out = work / f"{name}-{'down' if reverse else 'up'}.txt"
                    native = [] if args.no_native else ["--native"]
                    cmd = [spy, "record", "-p", str(pids[name]), "-f", "raw", "-o", str(out),
                           "-r", str(args.rate), *native]  # fmt: skip
                    spies.append((name, out, procs.popen(cmd, work / f"py-spy-{name}.log")))
                time.sleep(1.0)  # py-spy attached (it prints nothing until the end)
                t0 = time.monotonic()
                mbs, moved = transfer(ports.iperf, size, reverse)
                seconds = time.monotonic() - t0
                rows.append(f"{direction:20} {mbs:8.1f} MB/s  (profiled: relay and provider)")
                rc.say(rows[-1])
                for name, out, proc in spies:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        procs.kill(proc)
                    profiles.append((f"{name}, {direction}", out, seconds))
    finally:
        if outrelay is not None:
            outrelay.close()
        procs.close()
    extra = f"; agents {' '.join(args.agent_arg)}" if args.agent_arg else ""
    extra += f"; yamux window {args.yamux_window} (hook)" if args.yamux_window else ""
    print(f"profile_tcp: {size / 2**30:g} GiB per transfer through one stream, iperf3 -n; "
          f"--loop {args.loop}{extra}; {rc.machine()}; raw profiles in {work}")  # fmt: skip
    print()
    for row in rows:
        print(row)
    for title, raw, seconds in profiles:
        if raw.exists():
            show(title, raw, args.top, seconds, args.rate)
        else:
            print(f"\n## {title}: no profile written (see {work})")
    return 0


def extra_agent_args(extra: list[str]) -> None:
    """Make the agents :class:`real_clients.OutRelay` starts get ``extra`` on their command line.

    ``OutRelay.column`` imports ``AgentProcess`` when called, so replacing the
    module attribute with a subclass is enough (bench-only; no product change).
    """
    import outrelay.agent.testing as testing

    base = testing.AgentProcess

    class WithArgs(base):  # type: ignore[misc, valid-type]
        def __init__(self, workdir: Path, name: str, args: list[str]) -> None:
            super().__init__(workdir, name, [*args, *extra])

    testing.AgentProcess = WithArgs  # type: ignore[assignment, misc]


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(KiB|MiB|)", text.strip())
    if not m:
        raise SystemExit(f"--yamux-window: want e.g. 1MiB or 262144, got {text!r}")
    return int(m.group(1)) * {"": 1, "KiB": 1024, "MiB": 2**20}[m.group(2)]


WINDOW_HOOK = """\
# Written by bench/profile_tcp.py --yamux-window: every TcpLink offers this receive window.
import outrelay.transport.tcp as _tcp

_Session = _tcp.YamuxSession


def _session(**kw):
    return _Session(window={window}, **kw)


_tcp.YamuxSession = _session
"""


def window_hook(work: Path, window: int) -> None:
    """A ``sitecustomize`` the children import first (``PYTHONPATH``): a larger yamux window.

    Bench-only experiment (the product's window is not configurable yet):
    what the window costs in throughput, without a change to ``src/``.
    """
    hook = work / "window-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(WINDOW_HOOK.format(window=window))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p
    )


def agent_pids(work: Path) -> dict[str, int]:
    """PIDs of the provider and consumer agents of the TCP column (from their command lines)."""
    found: dict[str, int] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" not in cmdline or str(work).encode() not in b" ".join(cmdline):
            continue
        for name in ("provider", "consumer"):
            if any(arg.decode(errors="replace").endswith(f"agent-{name}.crt") for arg in cmdline):
                found[name] = int(proc.name)
    if set(found) != {"provider", "consumer"}:
        raise RuntimeError(f"agent processes not found under {work}: {found}")
    return found


if __name__ == "__main__":
    sys.exit(main())
