"""Operator commands against a real controller process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from outrelay.cli import cli
from outrelay.cli.ops import follow_events
from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.proto import audit_pb2 as ap
from outrelay.proto import audit_pb2_grpc as ag
from outrelay.proto import registry_pb2 as rp
from outrelay.proto import registry_pb2_grpc as rg

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    work = tmp_path_factory.mktemp("cli")
    proc = ControllerProcess(work, dev_pki(work / "pki"))
    try:
        yield proc.start()
    finally:
        proc.kill()


def run(ctl: ControllerProcess, *args: str, role: str = "admin") -> Any:
    pki = ctl.pki
    cert, key = {
        "admin": ("admin-admin.crt", "admin-admin.key"),
        "relay": ("relay-r1.crt", "relay-r1.key"),
    }[role]
    env = {
        "OUTRELAY_CONTROLLER": ctl.target,
        "OUTRELAY_CERT": str(pki / cert),
        "OUTRELAY_KEY": str(pki / key),
        "OUTRELAY_CA": str(pki / "ca.crt"),
    }
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_policy_add_list_remove(ctl: ControllerProcess) -> None:
    res = run(
        ctl,
        "policy",
        "add",
        "--tenant",
        "acme",
        "--caller",
        "*",
        "--target",
        "web",
        "--decision",
        "deny",
        "--expires",
        "1h",
        "--p2p-mode",
        "forbidden",
        "--id",
        "r1",
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "r1"
    res = run(ctl, "policy", "list", "--tenant", "acme", "-o", "json")
    rows = json.loads(res.output)
    assert [(r["id"], r["decision"], r["p2p"]) for r in rows] == [("r1", "deny", "forbidden")]
    assert rows[0]["expires"] != "-"
    table = run(ctl, "policy", "list", "--tenant", "acme").output.splitlines()
    assert table[0].split()[:3] == ["ID", "CALLER", "TARGET"] and table[1].startswith("r1 ")
    # duplicate id: a server error, exit 1, one line
    res = run(
        ctl,
        "policy",
        "add",
        "--tenant",
        "acme",
        "--caller",
        "*",
        "--target",
        "web",
        "--decision",
        "allow",
        "--id",
        "r1",
    )
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "ALREADY_EXISTS" in res.output
    assert run(ctl, "policy", "remove", "--tenant", "acme", "--id", "r1").output == "removed\n"
    res = run(ctl, "policy", "remove", "--tenant", "acme", "--id", "r1")
    assert res.exit_code == 1 and "no such policy" in res.output


@pytest.mark.parametrize(
    "args",
    [
        ["policy", "add", "--tenant", "acme", "--caller", "*", "--target", "*"],
        [
            "policy",
            "add",
            "--tenant",
            "acme",
            "--caller",
            "*",
            "--target",
            "*",
            "--decision",
            "maybe",
        ],
        [
            "policy",
            "add",
            "--tenant",
            "acme",
            "--caller",
            "*",
            "--target",
            "*",
            "--decision",
            "allow",
            "--expires",
            "soon",
        ],
        ["policy", "list"],
        ["audit", "query", "--tenant", "acme", "--limit", "-1"],
        ["registry", "list", "--tenant", "acme"],
    ],
)
def test_usage_errors_exit_2(ctl: ControllerProcess, args: list[str]) -> None:
    assert run(ctl, *args).exit_code == 2


def test_server_side_validation_exit_1(ctl: ControllerProcess) -> None:
    res = run(
        ctl,
        "policy",
        "add",
        "--tenant",
        "Not A Tenant",
        "--caller",
        "*",
        "--target",
        "*",
        "--decision",
        "allow",
    )
    assert res.exit_code == 1 and "INVALID_ARGUMENT: rule.tenant" in res.output


def test_wrong_role_is_reported(ctl: ControllerProcess) -> None:
    res = run(
        ctl,
        "policy",
        "add",
        "--tenant",
        "acme",
        "--caller",
        "*",
        "--target",
        "*",
        "--decision",
        "allow",
        role="relay",
    )
    assert res.exit_code == 1 and "PERMISSION_DENIED" in res.output


def test_missing_certificates_are_usage_errors(ctl: ControllerProcess) -> None:
    res = CliRunner().invoke(
        cli,
        ["policy", "list", "--tenant", "acme", "--controller", ctl.target],
        env={"OUTRELAY_CERT": "", "OUTRELAY_KEY": "", "OUTRELAY_CA": ""},
    )
    assert res.exit_code == 2 and "--cert" in res.output


def test_unreachable_controller_exit_1(tmp_path: Path, ctl: ControllerProcess) -> None:
    res = run(ctl, "policy", "list", "--tenant", "acme", "--controller", "127.0.0.1:1")
    assert res.exit_code == 1 and "UNAVAILABLE" in res.output


def test_audit_and_registry(ctl: ControllerProcess) -> None:
    with ctl.channel("relay") as ch:
        ag.AuditStub(ch).RecordBatch(
            ap.RecordBatchRequest(
                events=[
                    ap.AuditEvent(
                        ts_unix_ms=1000,
                        tenant="acme",
                        caller="c1",
                        target="web",
                        decision=1,
                        reason="r",
                    ),
                    ap.AuditEvent(
                        ts_unix_ms=2000, tenant="acme", caller="c2", target="web", decision=2
                    ),
                ]
            ),
            timeout=5,
        )
        rg.RegistryStub(ch).RegisterService(
            rp.RegisterServiceRequest(
                tenant="acme", service_name="web", agent_uri="a1", relay_id="r1"
            ),
            timeout=5,
        )
    rows = json.loads(run(ctl, "audit", "query", "--tenant", "acme", "-o", "json").output)
    assert [r["caller"] for r in rows] == ["c2", "c1"] and rows[0]["decision"] == "deny"
    lines = run(ctl, "audit", "query", "--tenant", "acme", "--caller", "c1").output.splitlines()
    assert len(lines) == 2 and "c1" in lines[1]
    rows = json.loads(
        run(ctl, "registry", "list", "--tenant", "acme", "--service", "web", "-o", "json").output
    )
    assert [r["agent_uri"] for r in rows] == ["a1"]
    assert run(ctl, "relays", "list").exit_code == 1


def test_follow_yields_each_event_once() -> None:
    store: list[ap.AuditEvent] = []
    polls: list[int] = []

    def query(since: int) -> list[ap.AuditEvent]:
        polls.append(since)
        if len(polls) == 2:
            store.append(ap.AuditEvent(ts_unix_ms=20, caller="b"))
            store.append(ap.AuditEvent(ts_unix_ms=20, caller="c"))
        if len(polls) == 3:
            store.append(ap.AuditEvent(ts_unix_ms=30, caller="d"))
        rows = [(i, e) for i, e in enumerate(store) if e.ts_unix_ms >= since]
        return [
            e for _, e in sorted(rows, key=lambda r: (-r[1].ts_unix_ms, -r[0]))
        ]  # as the server

    store.append(ap.AuditEvent(ts_unix_ms=10, caller="a"))
    it = follow_events(query, 0, 0)
    assert [next(it).caller for _ in range(4)] == ["a", "b", "c", "d"]
    assert polls[-1] in (20, 30)


def test_controller_command_usage(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["controller", "--db", str(tmp_path / "x.db")], env={})
    assert res.exit_code == 2 and "--cert" in res.output
    res = CliRunner().invoke(cli, ["controller", "--insecure", "--audit-retention", "forever"])
    assert res.exit_code == 2
