"""The dev bundle: file layout and modes, secrets.yaml, a TLS 1.3 mutual handshake."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from cryptography import x509

from outrelay.identity import CONTROLLER_NAME, Identity, peer_identity
from outrelay.pki.devbundle import DevBundleConfig, write_dev_bundle

PROVIDER = "outrelay://acme/agent/00000000-0000-0000-0000-000000000001"
CONSUMER = "outrelay://acme/agent/00000000-0000-0000-0000-000000000002"


def test_layout_and_modes(dev_bundle: Path) -> None:
    assert stat.S_IMODE(dev_bundle.stat().st_mode) == 0o700
    names = sorted(p.name for p in dev_bundle.iterdir())
    stems = ["admin-admin", "agent-consumer", "agent-provider", "ca", "controller", "relay-r1"]
    assert names == sorted(
        [f"{s}.crt" for s in stems] + [f"{s}.key" for s in stems] + ["secrets.yaml"]
    )
    for path in dev_bundle.iterdir():
        # secrets.yaml holds private keys too
        private = path.suffix == ".key" or path.name == "secrets.yaml"
        want = 0o600 if private else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == want, path
    expected = {
        "relay-r1": "outrelay://acme/relay/r1",
        "agent-provider": PROVIDER,
        "agent-consumer": CONSUMER,
        "admin-admin": "outrelay://acme/admin/admin",
    }
    ca = x509.load_pem_x509_certificate((dev_bundle / "ca.crt").read_bytes())
    for stem, uri in expected.items():
        cert = x509.load_pem_x509_certificate((dev_bundle / f"{stem}.crt").read_bytes())
        assert str(peer_identity(cert)) == uri
        cert.verify_directly_issued_by(ca)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert life.total_seconds() == 720 * 3600 + 60


def test_secrets_yaml(dev_bundle: Path) -> None:
    text = (dev_bundle / "secrets.yaml").read_text()
    docs = re.split(r"(?m)^---\n", text)
    assert len(docs) == 4
    controller, *docs = docs
    assert "  name: outrelay-controller-tls\n" in controller
    assert "outrelay.dev/uri" not in controller
    assert (dev_bundle / "controller.crt").read_text().splitlines()[1] in controller
    names = ["outrelay-relay-tls", "outrelay-agent-provider-tls", "outrelay-agent-consumer-tls"]
    uris = ["outrelay://acme/relay/r1", PROVIDER, CONSUMER]
    stems = ["relay-r1", "agent-provider", "agent-consumer"]
    for doc, name, uri, stem in zip(docs, names, uris, stems, strict=True):
        assert doc.startswith("apiVersion: v1\nkind: Secret\nmetadata:\n")
        assert f"  name: {name}\n  namespace: outrelay\n" in doc
        assert "    app.kubernetes.io/part-of: outrelay\n" in doc
        assert "    app.kubernetes.io/managed-by: outrelay\n" in doc
        assert f'    outrelay.dev/uri: "{uri}"\n' in doc
        assert "type: Opaque\nstringData:\n  tls.crt: |\n" in doc
        cert = (dev_bundle / f"{stem}.crt").read_text()
        assert "".join(f"    {line}\n" for line in cert.splitlines()) in doc
        assert "  tls.key: |\n    -----BEGIN PRIVATE KEY-----\n" in doc
        assert "  ca.crt: |\n    -----BEGIN CERTIFICATE-----\n" in doc


def test_controller_cert_names(dev_bundle: Path) -> None:
    cert = x509.load_pem_x509_certificate((dev_bundle / "controller.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    assert "localhost" in dns
    assert "outrelay-controller.outrelay.svc.cluster.local" in dns
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_options_and_validation(tmp_path: Path) -> None:
    bundle = write_dev_bundle(
        DevBundleConfig(out=tmp_path / "x", tenant="globex", relay_id="r7", namespace="prod")
    )
    assert bundle.identities["relay"] == Identity.relay("globex", "r7")
    assert (tmp_path / "x" / "relay-r7.crt").exists()
    assert "  namespace: prod\n" in (tmp_path / "x" / "secrets.yaml").read_text()
    with pytest.raises(ValueError, match="namespace"):
        write_dev_bundle(DevBundleConfig(out=tmp_path / "y", namespace="Bad Ns"))


def test_secrets_yaml_parses(dev_bundle: Path) -> None:
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((dev_bundle / "secrets.yaml").read_text()))
    assert [d["metadata"]["name"] for d in docs] == [
        "outrelay-controller-tls",
        "outrelay-relay-tls",
        "outrelay-agent-provider-tls",
        "outrelay-agent-consumer-tls",
    ]
    provider = docs[2]
    assert provider["metadata"]["annotations"]["outrelay.dev/uri"] == PROVIDER
    assert provider["stringData"]["tls.crt"] == (dev_bundle / "agent-provider.crt").read_text()
    assert provider["stringData"]["tls.key"] == (dev_bundle / "agent-provider.key").read_text()
    assert provider["stringData"]["ca.crt"] == (dev_bundle / "ca.crt").read_text()


def _profile(path: Path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    hosts += [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    return [u._name for u in eku], hosts


def test_leaf_profiles_by_role(dev_bundle: Path) -> None:
    """Agents and the admin are client-only without host names; the relay serves
    localhost and 127.0.0.1; the controller carries its role name first."""
    assert _profile(dev_bundle / "agent-provider.crt") == (["clientAuth"], [])
    assert _profile(dev_bundle / "agent-consumer.crt") == (["clientAuth"], [])
    assert _profile(dev_bundle / "admin-admin.crt") == (["clientAuth"], [])
    assert _profile(dev_bundle / "relay-r1.crt") == (
        ["serverAuth", "clientAuth"],
        ["localhost", "127.0.0.1"],
    )
    usages, hosts = _profile(dev_bundle / "controller.crt")
    assert usages == ["serverAuth"]
    assert hosts[0] == CONTROLLER_NAME
