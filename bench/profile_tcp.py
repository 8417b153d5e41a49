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
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


def summarize(raw: Path, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, top by self, top by total) of a py-spy raw file."""
    self_t: collections.Counter[str] = collections.Counter()
    total_t: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        m = RAW_LINE.match(line)
        if not m:
            continue
        stack, count = m.group(1).split(";"), int(m.group(2))
        names = [frame_name(f) for f in stack if f]
        if not names:
            continue
        samples += count
        self_t[names[-1]] += count
        for name in set(names):
            total_t[name] += count
    return samples, self_t.most_common(top), total_t.most_common(top)


def show(title: str, raw: Path, top: int, seconds: float, rate: int) -> None:
    samples, by_self, by_total = summarize(raw, top)
    busy = samples / (seconds * rate) if seconds else 0.0
    print(f"\n## {title}: {samples} samples in {seconds:.1f} s at {rate}/s "
          f"(busy ~{busy:.0%} of the time)")  # fmt: skip
    if not samples:
        return
    for label, rows in (("self", by_self), ("total", by_total)):
        print(f"\ntop {top} by {label} time")
        for name, n in rows:
            print(f"  {100 * n / samples:5.1f}%  {name}")


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
    parser.add_argument("--workdir", default="", help="keep logs and raw profiles here")
    args = parser.parse_args(argv)
    if not shutil.which("iperf3"):
        rc.say("iperf3 not found (Debian package iperf3)")
        return 1
    spy = py_spy()
    size = int(args.gib * 2**30)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="outrelay-prof-"))
    work.mkdir(parents=True, exist_ok=True)
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
    print(f"profile_tcp: {size / 2**30:g} GiB per transfer through one stream, iperf3 -n; "
          f"--loop {args.loop}; {rc.machine()}; raw profiles in {work}")  # fmt: skip
    print()
    for row in rows:
        print(row)
    for title, raw, seconds in profiles:
        if raw.exists():
            show(title, raw, args.top, seconds, args.rate)
        else:
            print(f"\n## {title}: no profile written (see {work})")
    return 0


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
