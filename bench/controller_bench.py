"""Controller benchmarks: policy decision time and Resolve latency.

Run: ``.venv/bin/python bench/controller_bench.py [--quick]``. Prints two
tables. Policy decisions are measured in-process on ``PolicyEngine``: exact
targets (``svc-N``, the middle rule matches), wildcard targets with a
literal prefix (``svc-N-*``, only the last rule matches) and wildcard
targets starting with ``*`` (``*.svc-N``: no prefix to index, the scan is
linear; only the last rule matches, the worst case). Resolve is
measured end to end: a controller process over mTLS, its database filled
beforehand through ``Store``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from outrelay.controller.store import Store
from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.policy import PolicyEngine, Rule, Verdict
from outrelay.proto import registry_pb2 as rp
from outrelay.proto import registry_pb2_grpc as rg

CALLER = "outrelay://acme/agent/00000000-0000-0000-0000-000000000001"


def time_per_call(fn: object, n: int) -> float:
    """Median over 5 runs of the mean µs per call."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


#: kind -> (target pattern of rule ``i``, the target decided among ``n`` rules)
POLICY_SHAPES: dict[str, tuple[Callable[[int], str], Callable[[int], str]]] = {
    "exact": (lambda i: f"svc-{i}", lambda n: f"svc-{n // 2}"),
    "wildcard": (lambda i: f"svc-{i}-*", lambda n: f"svc-{n - 1}-x"),
    # no literal prefix: every rule shares one group, scanned in order
    "leading*": (lambda i: f"*.svc-{i}", lambda n: f"x.svc-{n - 1}"),
}


def bench_policy(sizes: list[int]) -> list[tuple[str, int, float]]:
    rows = []
    for kind, (pattern, target_of) in POLICY_SHAPES.items():
        for size in sizes:
            rules = [
                Rule(
                    f"r{i}",
                    "acme",
                    "outrelay://acme/*",
                    pattern(i),
                    verdict=Verdict.ALLOW,
                    created_at_unix_ms=i,
                )
                for i in range(size)
            ]
            target = target_of(size)
            engine = PolicyEngine(rules)
            decision = engine.decide("acme", CALLER, target, "", 0)
            assert decision.allowed, (kind, size, decision)
            n = max(20, min(20_000, 2_000_000 // size))
            us = time_per_call(lambda e=engine, t=target: e.decide("acme", CALLER, t, "", 0), n)
            rows.append((kind, size, us))
    return rows


def bench_resolve(sizes: list[int], calls: int) -> list[tuple[int, float, float]]:
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            pki = dev_pki(work / "pki")
            store = Store(str(work / "controller.db"))
            store.upsert_relay("r1", "eu", "r1:7443")
            for i in range(size):
                store.register_provider("acme", f"svc-{i}", f"agent-{i}", "r1", "")
            store.close()
            ctl = ControllerProcess(work, pki, args=["--relay-heartbeat", "1h"]).start()
            try:
                with ctl.channel("relay") as ch:
                    stub = rg.RegistryStub(ch)
                    req = rp.ResolveRequest(tenant="acme", service_name=f"svc-{size // 2}")
                    assert len(stub.Resolve(req, timeout=5).providers) == 1
                    samples = []
                    for _ in range(calls):
                        start = time.perf_counter()
                        stub.Resolve(req, timeout=5)
                        samples.append((time.perf_counter() - start) * 1e6)
                samples.sort()
                rows.append((size, statistics.median(samples), samples[int(len(samples) * 0.99)]))
            finally:
                ctl.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = parser.parse_args(argv)
    policy_sizes = [1, 1000, 10_000] if args.quick else [1, 1000, 100_000]
    resolve_sizes = [10, 1000] if args.quick else [10, 10_000]

    print("Policy decision (PolicyEngine.decide, in-process)")
    print(f"{'targets':<10}{'rules':>10}{'µs/decision':>14}{'vs 1 rule':>11}")
    rows = bench_policy(policy_sizes)
    base: dict[str, float] = {}
    for kind, size, us in rows:
        base.setdefault(kind, us)
        print(f"{kind:<10}{size:>10}{us:>14.2f}{us / base[kind]:>10.1f}x")

    print()
    print("Resolve (gRPC over mTLS to a controller process, loopback)")
    print(f"{'services':>10}{'p50 µs':>10}{'p99 µs':>10}")
    for size, p50, p99 in bench_resolve(resolve_sizes, 300 if args.quick else 2000):
        print(f"{size:>10}{p50:>10.0f}{p99:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
