"""One exit-code rule for every component (real ``outrelay`` processes).

A user mistake (missing certificate file, malformed HOST:PORT) exits 2 with
one ``Error: ...`` line on stderr naming the flag, never a traceback, in
every command that takes such a flag. Runtime failures (exit 1) are covered
where they happen (tests/e2e/test_controller_storage.py for the controller).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from outrelay.childproc import child_env, outrelay_argv
from outrelay.cli import cli

pytestmark = pytest.mark.timeout(120)

#: {cert}, {key}, {ca}: a valid dev-bundle leaf; {missing}: a file that does not exist
CASES: dict[str, list[str]] = {
    # a missing certificate file
    "controller-missing-cert": [
        "controller", "--cert", "{missing}", "--key", "{key}", "--ca", "{ca}",
        "--db", "c.db", "--debug-listen", "",
    ],
    "relay-missing-cert": [
        "relay", "--tenant", "acme", "--cert", "{missing}", "--key", "{key}", "--ca", "{ca}",
    ],
    "agent-missing-cert": ["agent", "--cert", "{missing}", "--key", "{key}", "--ca", "{ca}"],
    "policy-missing-cert": [
        "policy", "list", "--controller", "127.0.0.1:1",
        "--cert", "{missing}", "--key", "{key}", "--ca", "{ca}",
    ],
    "registry-missing-cert": [
        "registry", "list", "--controller", "127.0.0.1:1",
        "--cert", "{missing}", "--key", "{key}", "--ca", "{ca}",
    ],
    "pki-token-missing-cert": [
        "pki", "token", "--controller", "127.0.0.1:1", "--tenant", "acme",
        "--cert", "{missing}", "--key", "{key}", "--ca", "{ca}",
    ],
    "enroll-missing-ca": [
        "enroll", "--controller", "127.0.0.1:1", "--token", "t", "--tenant", "acme",
        "--ca", "{missing}", "--out", "out",
    ],
    "pki-issue-missing-ca-dir": [
        "pki", "issue", "--ca-dir", "{missing}", "--uri", "outrelay://acme/relay/r2",
        "--out", "out",
    ],
    # a malformed address
    "controller-bad-listen": [
        "controller", "--listen", "nowhere", "--cert", "{cert}", "--key", "{key}", "--ca", "{ca}",
        "--db", "c.db", "--debug-listen", "",
    ],
    "relay-bad-listen": [
        "relay", "--tenant", "acme", "--listen", "nowhere",
        "--cert", "{cert}", "--key", "{key}", "--ca", "{ca}",
    ],
    "relay-bad-controller": [
        "relay", "--tenant", "acme", "--controller", "nowhere",
        "--cert", "{cert}", "--key", "{key}", "--ca", "{ca}",
    ],
    "agent-bad-relay": ["agent", "--relay", "nowhere", "--cert", "{cert}", "--key", "{key}",
                        "--ca", "{ca}"],
    "policy-bad-controller": [
        "policy", "list", "--controller", "nowhere", "--cert", "{cert}", "--key", "{key}",
        "--ca", "{ca}",
    ],
    "pki-token-bad-controller": [
        "pki", "token", "--controller", "nowhere", "--tenant", "acme",
        "--cert", "{cert}", "--key", "{key}", "--ca", "{ca}",
    ],
    "enroll-bad-controller": [
        "enroll", "--controller", "nowhere", "--token", "t", "--tenant", "acme",
        "--ca", "{ca}", "--out", "out",
    ],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_mistake_exits_2_with_one_line(case: str, dev_bundle: Path, tmp_path: Path) -> None:
    names = {
        "cert": str(dev_bundle / "admin-admin.crt"),
        "key": str(dev_bundle / "admin-admin.key"),
        "ca": str(dev_bundle / "ca.crt"),
        "missing": str(tmp_path / "missing.pem"),
    }
    args = [a.format(**names) for a in CASES[case]]
    done = subprocess.run(
        outrelay_argv(args),
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "Traceback" not in done.stderr
    needle = names["missing"] if "missing" in case else "nowhere"
    assert needle in lines[0]
    assert not (tmp_path / "c.db").exists()


def test_click_usage_errors_are_one_line_too() -> None:
    result = CliRunner().invoke(cli, ["relay", "--window", "lots"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert "'--window'" in result.stderr and "relay --help" in result.stderr


def test_help_states_the_exit_code_rule() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "2  usage" in result.output and "1  runtime" in result.output
