"""Controller storage and start-up as an operator meets them: real ``outrelay`` processes.

A corrupt database is refused at start (exit 1, one line); ``outrelay
controller backup`` copies a running controller's database under live
writes and a controller started on the copy serves its rules; every flag is
checked before the database file is created; a busy port is a runtime
failure without gRPC's C-core log lines.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from outrelay.childproc import child_env, outrelay_argv
from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.proto import policy_pb2 as pp
from outrelay.proto import policy_pb2_grpc as pg

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def outrelay(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``outrelay ARGS`` to completion (a real process); stdout and stderr apart."""
    return subprocess.run(
        outrelay_argv(args),
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error: ...`` line on stderr (asserts there is nothing else)."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dev_pki(tmp_path_factory.mktemp("storage") / "pki")


def tls(pki: Path) -> list[str]:
    return [
        "--cert", str(pki / "controller.crt"),
        "--key", str(pki / "controller.key"),
        "--ca", str(pki / "ca.crt"),
    ]  # fmt: skip


def rule(i: int) -> pp.AddPolicyRequest:
    return pp.AddPolicyRequest(
        rule=pp.PolicyRule(
            id=f"rule-{i:04d}",
            tenant="acme",
            caller_pattern="*",
            target_pattern=f"svc-{i}",
            decision=pp.DECISION_ALLOW,
        )
    )


def rule_ids(ctl: ControllerProcess) -> set[str]:
    with ctl.channel("admin") as ch:
        reply = pg.PolicyStub(ch).ListPolicies(pp.ListPoliciesRequest(tenant="acme"), timeout=10)
    return {r.id for r in reply.rules}


@pytest.fixture
def controller(tmp_path: Path, pki: Path) -> Iterator[ControllerProcess]:
    ctl = ControllerProcess(tmp_path, pki)
    try:
        yield ctl.start()
    finally:
        ctl.kill()


def test_corrupt_database_is_refused_at_start(
    tmp_path: Path, pki: Path, controller: ControllerProcess
) -> None:
    with controller.channel("admin") as ch:
        for i in range(100):
            pg.PolicyStub(ch).AddPolicy(rule(i), timeout=10)
    assert controller.stop() == 0
    db = controller.db
    assert db.stat().st_size > 12 * 1024, "the damage must land inside the file"
    with open(db, "r+b") as f:
        f.seek(8192)
        f.write(b"\xa5" * 4096)

    done = outrelay(
        "controller", "--listen", "127.0.0.1:0", "--enroll-listen", "", "--debug-listen", "",
        "--db", str(db), *tls(pki), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    line = one_error_line(done)
    assert f"store: {db} is corrupt" in line
    assert "restore it from a backup" in line and "docs/controller.md" in line


def test_backup_under_live_writes_then_start_on_the_copy(
    tmp_path: Path, pki: Path, controller: ControllerProcess
) -> None:
    acked: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with controller.channel("admin") as ch:
                stub = pg.PolicyStub(ch)
                i = 0
                while not stop.is_set() and i < 5000:
                    acked.append(stub.AddPolicy(rule(i), timeout=10).id)
                    i += 1
        except grpc.RpcError as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(acked) < 50 and thread.is_alive():
            thread.join(0.02)
        before = set(acked)
        copy = tmp_path / "backup.db"
        done = outrelay("controller", "backup", "--db", str(controller.db), "--to", str(copy),
                        cwd=tmp_path)  # fmt: skip
        after_backup = len(acked)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert done.returncode == 0, done.stderr
    assert "quick_check ok" in done.stderr
    assert after_backup > len(before), "no write was acknowledged while the backup ran"
    assert controller.alive(), "the backup must not disturb the running controller"

    # restore by starting a controller on the copy: every rule acknowledged
    # before the backup began is there, and nothing that was never written
    restored = ControllerProcess(tmp_path / "restored", pki, db=copy)
    restored.workdir.mkdir()
    try:
        restored.start()
        ids = rule_ids(restored)
    finally:
        assert restored.stop() == 0
    assert before <= ids
    assert ids <= set(acked)
    assert rule_ids(controller) == set(acked)


def test_backup_refuses_an_existing_target_without_force(
    tmp_path: Path, controller: ControllerProcess
) -> None:
    target = tmp_path / "backup.db"
    target.write_text("an older backup")
    done = outrelay("controller", "backup", "--db", str(controller.db), "--to", str(target),
                    cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "exists; use --force" in one_error_line(done)
    assert target.read_text() == "an older backup"
    done = outrelay("controller", "backup", "--db", str(controller.db), "--to", str(target),
                    "--force", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert target.read_bytes().startswith(b"SQLite format 3\x00")


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--listen", "not-an-address"], "--listen: want HOST:PORT, got 'not-an-address'"),
        (["--listen", "127.0.0.1:99999"], "--listen: want HOST:PORT"),
        (["--enroll-listen", "nope"], "--enroll-listen: want HOST:PORT"),
        (["--debug-listen", "nope"], "--debug-listen: want HOST:PORT"),
        (["--cert", "missing.crt"], "--cert missing.crt: No such file or directory"),
        (["--ca-key", "missing.key"], "--ca-key missing.key: No such file or directory"),
        (["--db", "no/such/dir/c.db"], "--db no/such/dir/c.db: no such directory"),
        (
            ["--ready-file", "no/dir/ready.json"],
            "--ready-file no/dir/ready.json: no such directory",
        ),
    ],
)
def test_bad_flag_exits_2_and_creates_no_database(
    tmp_path: Path, pki: Path, flags: Sequence[str], needle: str
) -> None:
    args = ["--listen", "127.0.0.1:0", "--debug-listen", "", "--db", "controller.db", *tls(pki)]
    done = outrelay("controller", *args, *flags, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert needle in one_error_line(done)
    assert not list(tmp_path.glob("controller.db*")), "the database was created"


def test_key_of_another_certificate_exits_2(tmp_path: Path, pki: Path) -> None:
    args = ["--listen", "127.0.0.1:0", "--debug-listen", "", "--db", "controller.db", *tls(pki)]
    done = outrelay("controller", *args, "--key", str(pki / "relay-r1.key"), cwd=tmp_path)
    assert done.returncode == 2
    assert "does not belong to the certificate" in one_error_line(done)
    assert not (tmp_path / "controller.db").exists()


def test_busy_port_exits_1_without_grpc_core_lines(tmp_path: Path, pki: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["--listen", f"127.0.0.1:{port}", "--debug-listen", "", "--db", "controller.db"]
        done = outrelay("controller", *args, *tls(pki), cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        line = one_error_line(done)  # no "E1202 ... add_port.cc" line before it
        assert line == f"Error: listen 127.0.0.1:{port}: Address already in use"
        assert not (tmp_path / "controller.db").exists()

        # --log-level debug gives gRPC's own lines back
        debug = outrelay("controller", *args, *tls(pki), "--log-level", "debug", cwd=tmp_path)
    assert debug.returncode == 1
    assert "add_port.cc" in debug.stderr
