"""Cost of the controller's start-up integrity check: quick_check vs integrity_check.

Run: ``.venv/bin/python bench/controller_check.py [--audit N] [--rules N]``.
Fills a controller database through ``Store`` (policy rules, providers and
audit events, the table that grows: one row per decision, kept
``--audit-retention`` = 30 days), closes it, then times ``PRAGMA
quick_check`` and ``PRAGMA integrity_check`` on a fresh connection (median
of 3; the file is in the page cache, as it is right after a restart).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import apsw

from outrelay.controller.store import AuditRow, Store
from outrelay.policy import Rule, Verdict

CALLER = "outrelay://acme/agent/00000000-0000-0000-0000-0000000000{:02d}"


def fill(path: Path, rules: int, audit: int, providers: int) -> None:
    store = Store(str(path))
    try:
        for i in range(rules):
            rule = Rule(f"rule-{i:05d}", "acme", "*", f"svc-{i}", verdict=Verdict.ALLOW)
            store.add_policy(rule)
        for i in range(providers):
            store.register_provider("acme", f"svc-{i}", CALLER.format(i % 100), "r1", "")
        batch = 10_000
        for start in range(0, audit, batch):
            store.record_audit(
                [
                    AuditRow(
                        ts_unix_ms=1_700_000_000_000 + n,
                        tenant="acme",
                        caller=CALLER.format(n % 100),
                        target=f"svc-{n % 500}",
                        method="GET /api/v1/items",
                        verdict=Verdict.ALLOW if n % 7 else Verdict.DENY,
                        reason=f"rule-{n % 500:05d}",
                        stream_id=str(n),
                    )
                    for n in range(start, min(audit, start + batch))
                ]
            )
    finally:
        store.close()


def timed(path: Path, pragma: str) -> float:
    runs = []
    for _ in range(3):
        db = apsw.Connection(str(path))
        start = time.perf_counter()
        rows = db.execute(f"PRAGMA {pragma}").fetchall()
        runs.append(time.perf_counter() - start)
        db.close()
        assert rows == [("ok",)], rows
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--providers", type=int, default=2_000)
    parser.add_argument("--audit", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    args = parser.parse_args()
    print(f"{'audit rows':>10} {'MiB':>7} {'quick_check s':>14} {'integrity_check s':>18}")
    for audit in args.audit:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "controller.db"
            fill(path, args.rules, audit, args.providers)
            mib = path.stat().st_size / 2**20
            quick, full = timed(path, "quick_check"), timed(path, "integrity_check")
            print(f"{audit:>10} {mib:>7.1f} {quick:>14.3f} {full:>18.3f}")


if __name__ == "__main__":
    main()
