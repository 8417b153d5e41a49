"""``outrelay agent`` usage errors (CliRunner) and config parsing."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from outrelay.agent.config import Mapping, parse_hostport, split_relays
from outrelay.agent.reconnect import Backoff
from outrelay.cli import cli

from .conftest import DevPKI


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["agent", *args])
    return result.exit_code, result.output


def test_missing_credentials_exit_2() -> None:
    code, out = invoke("--cert", "x")
    assert code == 2 and "--key, --ca required" in out


@pytest.mark.parametrize("bad", ["svc", "=127.0.0.1:1", "svc=127.0.0.1", "svc=h:99999"])
def test_bad_mapping_exit_2(bad: str) -> None:
    code, out = invoke("--cert", "c", "--key", "k", "--ca", "a", "--consume", bad)
    assert code == 2 and "--consume" in out and "Traceback" not in out


def test_bad_uri_exit_2() -> None:
    code, out = invoke("--cert", "c", "--key", "k", "--ca", "a", "--uri", "http://x")
    assert code == 2 and "--uri" in out


def test_unreadable_files_exit_2() -> None:
    code, out = invoke("--cert", "c", "--key", "k", "--ca", "a")
    assert code == 2 and out == "Error: --cert c: No such file or directory\n"


def test_no_relay_answers_exit_1_with_exit_on_failure(dev_pki: DevPKI) -> None:
    d = dev_pki.dir
    code, out = invoke(
        "--exit-on-failure",
        "--relay", "127.0.0.1:9",
        "--cert", str(d / "agent-consumer.crt"),
        "--key", str(d / "agent-consumer.key"),
        "--ca", str(d / "ca.crt"),
    )  # fmt: skip
    assert code == 1 and "all relays failed" in out


def test_parsing_helpers() -> None:
    assert split_relays(["a:1, b:2", "c:3", " "]) == ["a:1", "b:2", "c:3"]
    assert parse_hostport("[::1]:7443") == ("::1", 7443)
    m = Mapping.parse("svc=127.0.0.1:0")
    assert (m.name, m.host, m.port, m.address) == ("svc", "127.0.0.1", 0, "127.0.0.1:0")
    with pytest.raises(ValueError):
        parse_hostport(":80")


def test_backoff_schedule() -> None:
    backoff = Backoff(cap=30)
    assert [backoff.next_delay() for _ in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]
    backoff.reset()
    assert backoff.next_delay() == 0


def test_max_streams_per_caller_must_be_positive() -> None:
    code, out = invoke("--cert", "c", "--key", "k", "--ca", "a", "--max-streams-per-caller", "0")
    assert code == 2 and "--max-streams-per-caller" in out
