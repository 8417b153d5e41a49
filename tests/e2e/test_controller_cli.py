"""Operator commands against a real controller process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from outrelay.cli import cli
from outrelay.cli.ops import follow_events
from outrelay.controller.testing import ControllerProcess
from outrelay.proto import audit_pb2 as ap
from outrelay.proto import audit_pb2_grpc as ag
from outrelay.proto import registry_pb2 as rp
from outrelay.proto import registry_pb2_grpc as rg

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def run(ctl: ControllerProcess, *args: str, role: str = "admin") -> Any:
    cert, key = ctl.leaf(role)
    env = {
        "OUTRELAY_CONTROLLER": ctl.target,
        "OUTRELAY_CERT": str(cert),
        "OUTRELAY_KEY": str(key),
        "OUTRELAY_CA": str(ctl.pki / "ca.crt"),
    }
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def policy_add(target: str, *rest: str, tenant: str | None = "acme") -> list[str]:
    """``policy add [--tenant TENANT] --caller * --target TARGET REST...``"""
    tenant_opt = ["--tenant", tenant] if tenant is not None else []
    return ["policy", "add", *tenant_opt, "--caller", "*", "--target", target, *rest]


def test_policy_add_list_remove(ctl: ControllerProcess) -> None:
    res = run(
        ctl,
        *policy_add(
            "web", "--decision", "deny", "--expires", "1h", "--p2p-mode", "forbidden", "--id", "r1"
        ),
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
    res = run(ctl, *policy_add("web", "--decision", "allow", "--id", "r1"))
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "ALREADY_EXISTS" in res.output
    assert run(ctl, "policy", "remove", "--tenant", "acme", "--id", "r1").output == "removed\n"
    res = run(ctl, "policy", "remove", "--tenant", "acme", "--id", "r1")
    assert res.exit_code == 1 and "no such policy" in res.output


@pytest.mark.parametrize(
    "args",
    [
        policy_add("*"),
        policy_add("*", "--decision", "maybe"),
        policy_add("*", "--decision", "allow", "--expires", "soon"),
        ["policy", "remove", "--tenant", "acme"],
        ["audit", "query", "--tenant", "acme", "--limit", "-1"],
        ["registry", "list", "-o", "yaml"],
        ["relays", "list", "--tenant", "acme"],
    ],
)
def test_usage_errors_exit_2(ctl: ControllerProcess, args: list[str]) -> None:
    assert run(ctl, *args).exit_code == 2


def test_server_side_validation_exit_1(ctl: ControllerProcess) -> None:
    res = run(ctl, *policy_add("*", "--decision", "allow", "--method", "x" * 2000, tenant=None))
    assert res.exit_code == 1 and "INVALID_ARGUMENT: rule.method_pattern" in res.output


@pytest.mark.parametrize(
    "args",
    [
        ["policy", "list", "--tenant", "globex"],
        ["policy", "remove", "--tenant", "globex", "--id", "x"],
        policy_add("*", "--decision", "allow", tenant="globex"),
        ["audit", "query", "--tenant", "globex"],
        ["registry", "list", "--tenant", "globex"],
    ],
)
def test_other_tenant_is_refused(ctl: ControllerProcess, args: list[str]) -> None:
    res = run(ctl, *args)
    assert res.exit_code == 1
    assert res.output == (
        "Error: PERMISSION_DENIED: "
        f"{'rule.tenant' if args[1] == 'add' else 'tenant'}: outrelay://acme/admin/admin "
        "may only use its own tenant 'acme', not 'globex'\n"
    )


def test_tenant_defaults_to_the_certificate(ctl: ControllerProcess) -> None:
    res = run(ctl, *policy_add("dflt", "--decision", "allow", "--id", "d1", tenant=None))
    assert res.exit_code == 0 and res.output == "d1\n"
    rows = json.loads(run(ctl, "policy", "list", "-o", "json").output)
    assert "d1" in [r["id"] for r in rows]
    assert run(ctl, "policy", "remove", "--id", "d1").output == "removed\n"
    res = run(ctl, "policy", "remove", "--id", "d1")
    assert res.exit_code == 1 and "no such policy 'd1' in your tenant" in res.output


def test_wrong_role_is_reported(ctl: ControllerProcess) -> None:
    res = run(ctl, *policy_add("*", "--decision", "allow"), role="relay")
    assert res.exit_code == 1 and "PERMISSION_DENIED" in res.output


def test_missing_certificates_are_usage_errors(ctl: ControllerProcess) -> None:
    res = CliRunner().invoke(
        cli,
        ["policy", "list", "--tenant", "acme", "--controller", ctl.target],
        env={"OUTRELAY_CERT": "", "OUTRELAY_KEY": "", "OUTRELAY_CA": ""},
    )
    assert res.exit_code == 2 and "--cert" in res.output


def test_unreachable_controller_exit_1(ctl: ControllerProcess) -> None:
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
        reg = rg.RegistryStub(ch)
        reg.UpsertRelay(
            rp.UpsertRelayRequest(id="r1", region="acme", endpoint="r1:7443"), timeout=5
        )
        ctl.allow_bind("*", "web", "db", tenant="acme")
        for name, agent, rid in (("web", "a1", "r1"), ("web", "a0", "r1"), ("db", "d1", "r1")):
            reg.RegisterService(
                rp.RegisterServiceRequest(
                    tenant="acme", service_name=name, agent_uri=agent, relay_id=rid
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
    assert [(r["service"], r["agent_uri"], r["relay_id"]) for r in rows] == [
        ("web", "a0", "r1"),
        ("web", "a1", "r1"),
    ]
    assert rows[0]["relay_region"] == "acme" and rows[0]["relay_endpoint"] == "r1:7443"
    assert rows[0]["live"] is True and rows[0]["status"] == "live"
    assert rows[0]["service_id"] == "acme/web" and rows[0]["updated_at_unix_ms"] > 0
    table = run(ctl, "registry", "list").output.splitlines()  # tenant from the certificate
    assert table[0].split() == [
        "SERVICE",
        "AGENT_URI",
        "RELAY_ID",
        "RELAY_REGION",
        "STATUS",
        "UPDATED",
    ]
    assert [line.split()[:5] for line in table[1:]] == [
        ["db", "d1", "r1", "acme", "live"],
        ["web", "a0", "r1", "acme", "live"],
        ["web", "a1", "r1", "acme", "live"],
    ]
    relays = json.loads(run(ctl, "relays", "list", "-o", "json").output)
    assert [(r["id"], r["region"], r["endpoint"], r["status"]) for r in relays] == [
        ("r1", "acme", "r1:7443", "live")
    ]
    assert relays[0]["live"] is True and relays[0]["last_heartbeat_unix_ms"] > 0
    table = run(ctl, "relays", "list").output.splitlines()
    assert table[0].split() == ["ID", "REGION", "ENDPOINT", "STATUS", "LAST_HEARTBEAT"]
    assert table[1].split()[:4] == ["r1", "acme", "r1:7443", "live"]
    # the relay role may not list
    res = run(ctl, "relays", "list", role="relay")
    assert res.exit_code == 1 and "PERMISSION_DENIED" in res.output


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
