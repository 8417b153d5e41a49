"""Crash and shutdown behaviour of the controller process and its database."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from outrelay.controller.store import Store
from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.proto import policy_pb2 as pp
from outrelay.proto import policy_pb2_grpc as pg

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TOTAL = 1000
KILL_AFTER = 400


def _rule(i: int) -> pp.AddPolicyRequest:
    return pp.AddPolicyRequest(
        rule=pp.PolicyRule(
            id=f"rule-{i:04d}",
            tenant="acme",
            caller_pattern="*",
            target_pattern=f"svc-{i}",
            decision=pp.DECISION_ALLOW,
        )
    )


def test_sigkill_keeps_every_acknowledged_rule(tmp_path: Path) -> None:
    pki = dev_pki(tmp_path / "pki")
    ctl = ControllerProcess(tmp_path, pki).start()
    acked: set[str] = set()
    lock = threading.Lock()
    killed = threading.Event()
    try:
        with ctl.channel("admin") as ch:
            stub = pg.PolicyStub(ch)

            def add(i: int) -> None:
                if killed.is_set():
                    return
                try:
                    rid = stub.AddPolicy(_rule(i), timeout=10).id
                except grpc.RpcError:
                    return  # in flight when the controller died: may or may not be stored
                with lock:
                    acked.add(rid)
                    if len(acked) >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        ctl.signal(signal.SIGKILL)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(add, range(TOTAL)))
        assert killed.is_set(), "the controller finished before it could be killed"
        assert ctl.proc is not None and ctl.proc.wait(10) == -signal.SIGKILL
    finally:
        ctl.kill()

    restarted = ControllerProcess(tmp_path, pki).start()
    try:
        with restarted.channel("admin") as ch:
            stored = {
                r.id
                for r in pg.PolicyStub(ch)
                .ListPolicies(pp.ListPoliciesRequest(tenant="acme"), timeout=10)
                .rules
            }
        assert acked <= stored, f"lost {len(acked - stored)} acknowledged rules"
        assert KILL_AFTER <= len(stored) < TOTAL
    finally:
        assert restarted.stop() == 0
    store = Store(str(restarted.db))
    try:
        assert store.integrity_check() == "ok"
        assert len(store.list_policies("acme")) == len(stored)
    finally:
        store.close()


def test_sigterm_is_graceful(tmp_path: Path) -> None:
    pki = dev_pki(tmp_path / "pki")
    ctl = ControllerProcess(tmp_path, pki).start()
    try:
        with ctl.channel("admin") as admin, ctl.channel("relay") as relay:
            pg.PolicyStub(admin).AddPolicy(_rule(1), timeout=5)
            watch = pg.PolicyStub(relay).Watch(pp.WatchPoliciesRequest(tenant="acme"), timeout=30)
            assert next(watch).rule.id == "rule-0001"
            assert next(watch).kind == pp.PolicyEvent.POLICY_KIND_SNAPSHOT_END
            ctl.signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as err:
                next(watch)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ctl.proc is not None and ctl.proc.wait(15) == 0
    finally:
        ctl.kill()
    assert "graceful stop complete" in ctl.log()
    # closed cleanly: the WAL was checkpointed into the main file
    wal = Path(str(ctl.db) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    store = Store(str(ctl.db))
    try:
        assert store.integrity_check() == "ok"
        assert [r.id for r in store.list_policies("acme")] == ["rule-0001"]
    finally:
        store.close()
