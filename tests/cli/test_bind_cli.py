"""CLI input rules of issue #12: service names in ``--expose``/``--consume``, policy patterns.

Each mistake is refused before anything starts or connects: one line naming
the flag and the rule, exit 2 (usage), no traceback.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from outrelay.cli import cli

CREDS = ["--cert", "c", "--key", "k", "--ca", "a"]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("flag", ["--expose", "--consume"])
@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("web=http://127.0.0.1:8080", "HOST an IP address or a DNS name (no scheme or path)"),
        ("we b/x=127.0.0.1:8080", "invalid service name 'we b/x': must be 1-63 characters"),
        ("evil/web=127.0.0.1:1", "invalid service name 'evil/web'"),
        ("*=127.0.0.1:1", "invalid service name '*'"),
        ("Web=127.0.0.1:1", "invalid service name 'Web'"),
        ("web=127.0.0.1/x:1", "HOST an IP address or a DNS name"),
        (f"{'w' * 5000}=127.0.0.1:1", "(5000 characters)"),
    ],
)
def test_agent_refuses_bad_expose_and_consume_exit_2(flag: str, value: str, rule: str) -> None:
    code, out = invoke("agent", *CREDS, flag, value)
    assert code == 2, out
    error = out.strip().splitlines()[-1]
    assert error.startswith(f"Error: {flag}: ") and rule in error, error
    assert "Traceback" not in out and len(error) < 400


def test_agent_accepts_good_names_then_looks_for_files() -> None:
    # past the mapping check, the next complaint is the missing certificate file (usage: exit 2)
    code, out = invoke("agent", *CREDS, "--expose", "svc-echo=[::1]:80", "--consume", "web=h:1")
    assert code == 2 and "--cert c: No such file or directory" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--caller", "not a uri[", "--target", "web"], "Error: --caller: 'not a uri[' is not '*'"),
        (["--caller", "c1", "--target", "web"], "Error: --caller: 'c1' is not"),
        (["--caller", "*", "--target", "a b"], "Error: --target: 'a b' is not a service name"),
        (
            ["--action", "bind", "--caller", "*", "--target", "evil/web"],
            "Error: --target: 'evil/web' is not a service name or a glob over service names",
        ),
        (
            ["--action", "bind", "--caller", "*", "--target", "outrelay://acme/agent/*"],
            "Error: --target: 'outrelay://acme/agent/*' is not a service name",
        ),
        (
            ["--action", "bind", "--caller", "*", "--target", "web", "--method", "GET"],
            "Error: --method: bind rules have no method",
        ),
        (["--action", "own", "--caller", "*", "--target", "web"], "'own' is not one of"),
    ],
)
def test_policy_add_refuses_malformed_patterns_exit_2(args: list[str], message: str) -> None:
    # --insecure and no controller: the refusal comes before any connection
    code, out = invoke("policy", "add", *args, "--decision", "allow", "--insecure")
    assert code == 2 and message in out and "Traceback" not in out, out


def test_policy_add_help_explains_bind() -> None:
    code, out = invoke("policy", "add", "--help")
    assert code == 0 and "--action [bind|dial]" in out and "provide (register)" in out
    code, out = invoke("policy", "--help")
    assert "bind  who may provide (register) a service" in out
