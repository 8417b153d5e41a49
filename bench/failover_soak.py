"""Failover soak: a large upload through relay A, A SIGKILLed mid-transfer, N times in a row.

Each run pushes ``--size`` bytes (default 200 MiB) from a TCP client through
the consumer agent to a sink behind the provider agent (both agents:
``--relay A,B``), kills relay A with SIGKILL once the sink has ``--kill-at``
bytes, and checks the sink's sha256. The pause is the longest silence the
sink saw between two reads. With ``--action failover`` the agents move to B
and A is started again for the next run (so each run starts on A); with
``--action restart`` A comes back on its address at once.

    .venv/bin/python bench/failover_soak.py --runs 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from outrelay.agent.testing import FailoverLab, MiB


def _size(text: str) -> int:
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1024, "m": MiB, "g": 1024 * MiB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _back_on_a(lab: FailoverLab, timeout: float = 60.0) -> None:
    """Start A again and move both agents back to it (kill B, restart B)."""
    lab.relay("A")
    mark = f"relay=127.0.0.1:{lab.ports['A']} uri="
    agents = [a for a in (lab.consumer, lab.provider) if a is not None]
    before = [agent.log().count(mark) for agent in agents]
    lab.relays["B"].kill()
    for agent, count in zip(agents, before, strict=True):
        agent.wait_log(mark, count=count + 1, timeout=timeout)
    lab.relay("B")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size", type=_size, default=200 * MiB, help="bytes per run (200MiB)")
    parser.add_argument("--kill-at", type=_size, default=None, help="default: size / 3")
    parser.add_argument("--action", choices=["failover", "restart"], default="failover")
    parser.add_argument("--workdir", default="", help="keep logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    kill_at = args.kill_at if args.kill_at is not None else args.size // 3
    work = Path(args.workdir or tempfile.mkdtemp(prefix="outrelay-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    relays = ("A", "B") if args.action == "failover" else ("A",)
    print(
        f"failover soak: {args.runs} runs x {args.size / MiB:g} MiB, SIGKILL relay A at "
        f"{kill_at / MiB:g} MiB, action={args.action}, logs in {work}",
        flush=True,
    )
    rows: list[tuple[int, bool, float, float]] = []
    with FailoverLab(work, relays=relays) as lab:
        lab.start()
        print(
            f"{'run':>3}  {'sha256':>6}  {'pause s':>8}  {'total s':>8}  {'MiB/s':>6}", flush=True
        )
        for run in range(1, args.runs + 1):
            if run > 1 and args.action == "failover":
                _back_on_a(lab)
            result = lab.transfer(args.size, kill_at=kill_at, action=args.action)
            ok = result.ok and result.received == args.size
            rate = args.size / MiB / result.duration if result.duration else 0.0
            rows.append((run, ok, result.pause, result.duration))
            print(
                f"{run:>3}  {'equal' if ok else 'DIFF':>6}  {result.pause:>8.3f}  "
                f"{result.duration:>8.1f}  {rate:>6.1f}"
                + (f"  {result.error}" if result.error else ""),
                flush=True,
            )
            time.sleep(0.2)
    pauses = [r[2] for r in rows]
    failed = [r[0] for r in rows if not r[1]]
    print(
        f"pause p50 {statistics.median(pauses):.3f} s, max {max(pauses):.3f} s; "
        f"{len(rows) - len(failed)}/{len(rows)} runs with sha256 equal",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
