"""The manifests in deployments/ agree with the code they deploy.

No cluster or Docker engine is needed: every `outrelay` invocation in a
manifest is parsed by the real click command, every Secret it mounts is one
the dev bundle writes, and the Dockerfile builds what the package declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest

from outrelay.cli import cli
from outrelay.pki.devbundle import DevBundleConfig, write_dev_bundle

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "deployments" / "k8s").glob("*.yaml"))


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in MANIFESTS:
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def containers() -> list[dict[str, Any]]:
    return [
        c
        for d in documents()
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def test_manifests_exist_and_parse() -> None:
    assert [p.name for p in MANIFESTS] == [
        "00-namespace.yaml",
        "10-outrelay-controller.yaml",
        "20-outrelay-relay.yaml",
        "30-outrelay-provider.yaml",
        "40-outrelay-consumer.yaml",
    ]
    for doc in documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "outrelay", doc["metadata"]["name"]


@pytest.mark.parametrize("container", containers(), ids=lambda c: c["name"])
def test_outrelay_arguments_parse(container: dict[str, Any]) -> None:
    args = container.get("args")
    if not args:
        pytest.skip("not an outrelay command")
    command = cli.get_command(click.Context(cli), args[0])
    assert command is not None, args[0]
    # make_context parses and validates every option without running anything
    with command.make_context(args[0], list(args[1:]), resilient_parsing=False) as ctx:
        assert ctx.params


def test_controller_is_a_single_writer_with_persistent_data() -> None:
    (deploy,) = [
        d
        for d in documents()
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "outrelay-controller"
    ]
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert "persistentVolumeClaim" in volumes["data"]


def test_mounted_secrets_are_in_the_dev_bundle(tmp_path: Path) -> None:
    write_dev_bundle(DevBundleConfig(out=tmp_path / "pki"))
    bundle = {
        d["metadata"]["name"]
        for d in yaml.safe_load_all((tmp_path / "pki" / "secrets.yaml").read_text())
    }
    mounted = {
        v["secret"]["secretName"]
        for d in documents()
        if d["kind"] == "Deployment"
        for v in d["spec"]["template"]["spec"].get("volumes", [])
        if "secret" in v
    }
    assert mounted and mounted <= bundle, mounted - bundle


def test_dockerfile_builds_the_declared_package() -> None:
    text = (ROOT / "deployments" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["outrelay"]' in text
    assert "USER 65532:65532" in text
    for path in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "src"):
        assert path in text and (ROOT / path).exists(), path


def test_agents_pin_the_deployed_relay(tmp_path: Path) -> None:
    """Every agent's --relay-uri is the identity in the relay Secret the relay mounts."""
    write_dev_bundle(DevBundleConfig(out=tmp_path / "pki"))
    secrets = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((tmp_path / "pki" / "secrets.yaml").read_text())
    }
    relay_uri = secrets["outrelay-relay-tls"]["metadata"]["annotations"]["outrelay.dev/uri"]
    agents = [c for c in containers() if c.get("args", [None])[0] == "agent"]
    assert len(agents) == 2
    for agent in agents:
        assert f"--relay-uri={relay_uri}" in agent["args"], agent["name"]
