"""Run the micro-benchmarks and print compiled-vs-pure speedups.

Usage: ``python bench/run.py [pytest args]`` (``make bench``). Runs
pytest-benchmark over ``bench/bench_*.py``, both implementations in the same
run, then prints one row per group: median time per call for each twin and
the ratio pure/compiled, against the target where one is set.

For the groups that time one short call per iteration it also prints two
derived ratios, using the harness's own cost of one C call (``len``, the
``call-overhead`` group): ``net`` subtracts that cost from both twins, and
``ceiling`` is pure / that cost, the speedup a compiled function that did no
work at all would show. A per-call target above the ceiling cannot be met by
any implementation called from Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: group -> minimal compiled/pure speedup the project promises.
TARGETS: dict[str, float] = {
    "header-encode": 10.0,
    "header-decode": 10.0,
    "decode-small-frames": 10.0,
    "ring-write-discard": 2.0,
    "ring-bytes-from": 2.0,
}


#: groups that time exactly one C-level call per iteration (the harness calls
#: the function itself), so its one-call overhead can be set against them.
#: fsm-cycle is not one: its iteration is a Python closure making six calls.
PER_CALL = {
    "header-encode",
    "header-decode",
    "encode-frame-small",
    "yamux-header-encode",
    "yamux-header-decode",
}


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [
            sys.executable, "-m", "pytest", "-c", str(HERE / "pytest.ini"), str(HERE),
            "-q", "--benchmark-only", "--benchmark-disable-gc",
            "--benchmark-columns=median,ops,rounds", "--benchmark-sort=name",
            f"--benchmark-json={out}", *argv,
        ]
        env = dict(os.environ, OUTRELAY_REQUIRE_EXTENSIONS="1")
        env.pop("OUTRELAY_NO_EXTENSIONS", None)
        rc = subprocess.call(cmd, env=env, stdout=subprocess.DEVNULL)
        if rc != 0 or not out.exists():
            print(f"benchmarks failed (pytest exit {rc}); rerun: {' '.join(cmd)}", file=sys.stderr)
            return rc or 1
        data = json.loads(out.read_text())
    rows: dict[str, dict[str, float]] = {}
    for b in data["benchmarks"]:
        impl = b["params"].get("impl") if b.get("params") else None
        if impl is None:
            impl = "compiled" if "[compiled" in b["name"] else "pure"
        rows.setdefault(b["group"] or b["name"], {})[impl] = b["stats"]["median"]
    return print_table(rows)


def print_table(rows: dict[str, dict[str, float]]) -> int:
    base = rows.pop("call-overhead", {}).get("compiled")
    header = (
        f"{'benchmark':<22} {'compiled':>10} {'pure':>10} {'speedup':>8} {'net':>7}"
        f" {'ceiling':>8} {'target':>7}  ok"
    )
    print(header)
    print("-" * len(header))
    for group in sorted(rows):
        c, p = rows[group].get("compiled"), rows[group].get("pure")
        if p is None:
            continue
        if c is None:  # a compiled twin not built yet (its benchmark skipped)
            print(f"{group:<22} {'missing':>10} {_fmt(p):>10} {'-':>8}")
            continue
        ratio = p / c
        net = ceiling = "-"
        if base is not None and group in PER_CALL:
            ceiling = f"{p / base:.1f}x"
            if c > base:
                net = f"{(p - base) / (c - base):.1f}x"
        target = TARGETS.get(group)
        ok = "" if target is None else ("yes" if ratio >= target else "NO")
        tgt = f">={target:g}x" if target else "-"
        print(
            f"{group:<22} {_fmt(c):>10} {_fmt(p):>10} {ratio:>7.1f}x {net:>7} {ceiling:>8}"
            f" {tgt:>7}  {ok}"
        )
    print("median time per call; speedup = pure / compiled, both measured in this run.")
    if base is not None:
        print(
            f"net = the same ratio after subtracting the harness's cost of one C call "
            f"({_fmt(base)}), for the single-call groups;\n"
            "ceiling = pure / that cost: the most any compiled function called from"
            " Python could show."
        )
    return 0


def _fmt(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.2f} {unit}"
    return f"{seconds / 1e-9:.2f} ns"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
