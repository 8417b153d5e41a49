"""``outrelay relay`` option parsing (no process started)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from outrelay.cli import cli
from outrelay.cli.relay import SIZE
from outrelay.relay.config import NO_TENANT, ConfigError, RelayConfig, certificate_relay_id


@pytest.mark.parametrize(
    ("text", "n"), [("65536", 65536), ("64KiB", 65536), ("1MiB", 1 << 20), ("16m", 16 << 20)]
)
def test_size(text: str, n: int) -> None:
    assert SIZE.convert(text, None, None) == n


def test_missing_credentials_is_usage_error() -> None:
    result = CliRunner().invoke(cli, ["relay"], env={})
    assert result.exit_code == 2
    assert "--cert, --key, --ca required" in result.output


def test_bad_window_is_usage_error() -> None:
    result = CliRunner().invoke(cli, ["relay", "--window", "lots"])
    assert result.exit_code == 2 and "invalid size" in result.output


def test_env_var_sets_option() -> None:
    result = CliRunner().invoke(cli, ["relay"], env={"OUTRELAY_RELAY_CERT": "x.pem"})
    assert result.exit_code == 2
    assert "--key, --ca required" in result.output


def test_config_tenants_and_checks() -> None:
    assert RelayConfig(tenant=" acme, beta,,acme").tenants == ["acme", "beta"]
    with pytest.raises(ConfigError):
        RelayConfig(cert="c", key="k", ca="a", listen="nope").check()
    with pytest.raises(ConfigError):
        RelayConfig(cert="c", key="k", ca="a", window=2 << 20, connection_window=1 << 20).check()
    RelayConfig(cert="c", key="k", ca="a", tenant="acme").check()
    RelayConfig(cert="c", key="k", ca="a", no_policy=True).check()


def test_max_streams_per_caller_option_env_and_bad_value() -> None:
    result = CliRunner().invoke(cli, ["relay", "--max-streams-per-caller", "0"])
    assert result.exit_code == 2 and "--max-streams-per-caller" in result.output
    result = CliRunner().invoke(
        cli, ["relay"], env={"OUTRELAY_RELAY_MAX_STREAMS_PER_CALLER": "lots"}
    )
    assert result.exit_code == 2 and "--max-streams-per-caller" in result.output
    assert RelayConfig().max_streams_per_caller == 256
    with pytest.raises(ConfigError):
        RelayConfig(cert="c", key="k", ca="a", tenant="acme", max_streams_per_caller=0).check()


def test_no_tenant_refused_unless_no_policy() -> None:
    """Today's mistake: a relay without --tenant silently enforced nothing. Now: exit 2."""
    result = CliRunner().invoke(cli, ["relay", "--cert", "c", "--key", "k", "--ca", "a"], env={})
    assert result.exit_code == 2
    assert NO_TENANT in result.output and "Traceback" not in result.output
    both = ["relay", "--cert", "c", "--key", "k", "--ca", "a", "--tenant", "acme", "--no-policy"]
    result = CliRunner().invoke(cli, both, env={})
    assert result.exit_code == 2 and "exclude each other" in result.output
    with pytest.raises(ConfigError, match="--no-policy"):
        RelayConfig(cert="c", key="k", ca="a").check()


def test_relay_id_comes_from_the_certificate(dev_bundle: Path) -> None:
    def config(**kw: str) -> RelayConfig:
        return RelayConfig(cert=str(dev_bundle / "relay-r1.crt"), key="k", ca="a", **kw)

    assert certificate_relay_id(config()) == "r1"  # outrelay://acme/relay/r1
    assert certificate_relay_id(config(relay_id="r1")) == "r1"
    with pytest.raises(ConfigError, match="differs from the certificate's relay id 'r1'"):
        certificate_relay_id(config(relay_id="127.0.0.1:7443"))
    agent = RelayConfig(cert=str(dev_bundle / "agent-provider.crt"), key="k", ca="a")
    with pytest.raises(ConfigError, match="not a relay"):
        certificate_relay_id(agent)
    with pytest.raises(ConfigError, match="credentials: cannot read"):
        certificate_relay_id(RelayConfig(cert=str(dev_bundle / "nope.crt")))
