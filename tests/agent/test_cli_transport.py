"""``outrelay agent --relay-tcp / --transport`` and ``outrelay relay --listen-tcp``: usage."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from outrelay.agent.config import AgentConfig
from outrelay.cli import cli
from outrelay.relay.config import ConfigError, RelayConfig

from .conftest import DevPKI


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


def creds(dev_pki: DevPKI) -> list[str]:
    d = dev_pki.dir
    return [
        "--cert", str(d / "agent-consumer.crt"),
        "--key", str(d / "agent-consumer.key"),
        "--ca", str(d / "ca.crt"),
    ]  # fmt: skip


def test_transport_tcp_without_relay_tcp_exit_2() -> None:
    code, out = invoke("agent", "--cert", "c", "--key", "k", "--ca", "a", "--transport", "tcp")
    assert code == 2 and "--transport tcp needs --relay-tcp" in out


def test_bad_relay_tcp_exit_2() -> None:
    code, out = invoke("agent", "--cert", "c", "--key", "k", "--ca", "a", "--relay-tcp", "nope")
    assert code == 2 and "--relay-tcp" in out and "Traceback" not in out


def test_bad_transport_value_exit_2() -> None:
    code, out = invoke("agent", "--cert", "c", "--key", "k", "--ca", "a", "--transport", "udp")
    assert code == 2 and "--transport" in out


def test_tcp_only_nobody_listening_exit_1_with_exit_on_failure(dev_pki: DevPKI) -> None:
    code, out = invoke(
        "agent", "--exit-on-failure", "--transport", "tcp", "--relay-tcp", "127.0.0.1:9",
        *creds(dev_pki),
    )  # fmt: skip
    assert code == 1 and "all relays failed" in out and "tcp 127.0.0.1:9" in out


def test_transport_from_environment(dev_pki: DevPKI) -> None:
    env = {"OUTRELAY_AGENT_TRANSPORT": "tcp", "OUTRELAY_AGENT_RELAY_TCP": "127.0.0.1:9"}
    code, out = invoke("agent", "--exit-on-failure", *creds(dev_pki), env=env)
    assert code == 1 and "tcp 127.0.0.1:9" in out


def test_help_explains_the_transports() -> None:
    code, out = invoke("agent", "--help")
    assert code == 0 and "--relay-tcp" in out and "happy eyeballs" in out


def test_agent_config_needs_an_address_for_its_transport() -> None:
    with pytest.raises(ValueError, match="TCP relay"):
        AgentConfig(relays=("a:1",), cert="c", key="k", ca="a", transport="tcp")
    cfg = AgentConfig(relays=(), relays_tcp="a:2,b:2", cert="c", key="k", ca="a")  # type: ignore[arg-type]
    assert cfg.relays_tcp == ("a:2", "b:2")
    with pytest.raises(ValueError, match="auto, quic or tcp"):
        AgentConfig(relays=("a:1",), cert="c", key="k", ca="a", transport="udp")


def test_relay_listen_tcp_malformed_is_a_config_error() -> None:
    cfg = RelayConfig(cert="c", key="k", ca="a", no_policy=True, listen_tcp="nope")
    with pytest.raises(ConfigError, match="--listen-tcp"):
        cfg.check()
    RelayConfig(cert="c", key="k", ca="a", no_policy=True, listen_tcp="127.0.0.1:0").check()


def test_relay_help_lists_listen_tcp() -> None:
    code, out = invoke("relay", "--help")
    assert code == 0 and "--listen-tcp" in out
