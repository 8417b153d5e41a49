"""A development PKI bundle (``outrelay pki dev``), after the reference's dev-pki.

Writes a brand-new CA, a relay leaf, the provider and consumer agent leaves
(fixed UUIDs ...0001 and ...0002), and ``secrets.yaml`` with the three
Kubernetes Secrets of the spec (§5) plus ``outrelay-controller-tls``
(our controller serves TLS). OutRelay adds a controller server certificate
(no identity URI; DNS ``controller.outrelay.invalid``, its role name, then
``localhost`` and the in-cluster Service names, IP ``127.0.0.1``) and an
operator leaf ``outrelay://<tenant>/admin/admin``. The relay leaf names
``localhost`` and ``127.0.0.1``; the agent and admin leaves are client-only
with no host names. Development only: it
overwrites files and the CA key sits next to the leaves.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from outrelay.identity import Identity
from outrelay.pki.ca import CA, cert_pem
from outrelay.pki.csr import key_pem
from outrelay.pki.files import ensure_dir, write_private, write_public

DEV_LEAF_TTL = dt.timedelta(hours=720)
PROVIDER_UUID = "00000000-0000-0000-0000-000000000001"
CONSUMER_UUID = "00000000-0000-0000-0000-000000000002"
ADMIN_NAME = "admin"
#: Kubernetes namespace names are RFC 1123 labels.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class DevBundleConfig:
    """Options of ``outrelay pki dev``."""

    #: Output directory (created 0700).
    out: Path = Path(".dev-pki")
    #: Tenant of the agents and admin; region label of the relay.
    tenant: str = "acme"
    #: Relay id.
    relay_id: str = "r1"
    #: Namespace of the emitted Secrets.
    namespace: str = "outrelay"


@dataclass(frozen=True)
class DevBundle:
    """What was written."""

    #: The output directory.
    out: Path
    #: Leaf name (``relay``, ``provider``, ``consumer``, ``admin``) -> identity.
    identities: dict[str, Identity]
    #: Every file written, in order.
    files: list[Path] = field(default_factory=list)


def _indented(pem: bytes) -> str:
    return "".join(f"    {line}\n" for line in pem.decode().splitlines())


def secret_yaml(name: str, namespace: str, uri: str, cert: bytes, key: bytes, ca: bytes) -> str:
    """One ``v1`` Secret in the reference's layout (no URI annotation for an empty uri)."""
    return (
        "apiVersion: v1\n"
        "kind: Secret\n"
        "metadata:\n"
        f"  name: {name}\n"
        f"  namespace: {namespace}\n"
        "  labels:\n"
        "    app.kubernetes.io/part-of: outrelay\n"
        "    app.kubernetes.io/managed-by: outrelay\n"
        + (f'  annotations:\n    outrelay.dev/uri: "{uri}"\n' if uri else "")
        + "type: Opaque\n"
        "stringData:\n"
        "  tls.crt: |\n"
        + _indented(cert)
        + "  tls.key: |\n"
        + _indented(key)
        + "  ca.crt: |\n"
        + _indented(ca)
    )


def write_dev_bundle(config: DevBundleConfig) -> DevBundle:
    """Generate and write a dev bundle (overwriting existing files).

    Raises:
        InvalidTenant / InvalidRelayID: bad tenant or relay id.
        ValueError: bad namespace.
        OSError: the directory cannot be written.
    """
    identities = {
        "relay": Identity.relay(config.tenant, config.relay_id),
        "provider": Identity.agent(config.tenant, PROVIDER_UUID),
        "consumer": Identity.agent(config.tenant, CONSUMER_UUID),
        "admin": Identity.admin(config.tenant, ADMIN_NAME),
    }
    if _NAMESPACE.fullmatch(config.namespace) is None:
        raise ValueError(f"invalid namespace {config.namespace!r} (want an RFC 1123 label)")
    out = ensure_dir(config.out)
    ca = CA.create()
    bundle = DevBundle(out, identities)

    def emit(
        stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> tuple[bytes, bytes]:
        """Write ``<stem>.crt`` and ``<stem>.key``; return their PEMs (cert, key)."""
        pems = cert_pem(cert), key_pem(key)
        bundle.files.append(write_public(out / f"{stem}.crt", pems[0]))
        bundle.files.append(write_private(out / f"{stem}.key", pems[1]))
        return pems

    bundle.files.append(write_public(out / "ca.crt", ca.cert_pem))
    bundle.files.append(write_private(out / "ca.key", ca.key_pem))
    # The in-cluster names of the controller Service (deployments/) as well as
    # loopback, so one dev bundle serves both `make demo` and a cluster.
    service = "outrelay-controller"
    controller_dns = [
        service,
        f"{service}.{config.namespace}",
        f"{service}.{config.namespace}.svc",
        f"{service}.{config.namespace}.svc.cluster.local",
    ]
    controller = ca.issue_server(
        ttl=DEV_LEAF_TTL, dns_names=controller_dns, ip_addresses=["127.0.0.1"]
    )
    controller_pems = emit("controller", *controller)
    leaves = {
        "relay": f"relay-{config.relay_id}",
        "provider": "agent-provider",
        "consumer": "agent-consumer",
        "admin": f"admin-{ADMIN_NAME}",
    }
    pems: dict[str, tuple[bytes, bytes]] = {}
    for name, stem in leaves.items():
        # Each leaf gets its role's profile (docs/identity.md): the relay
        # serverAuth+clientAuth with localhost and 127.0.0.1, the agents and
        # the admin clientAuth only, without host names.
        ips = ["127.0.0.1"] if name == "relay" else []
        pems[name] = emit(stem, *ca.issue(identities[name], DEV_LEAF_TTL, ip_addresses=ips))
    pems["controller"] = controller_pems
    secrets = [
        ("outrelay-controller-tls", "controller"),
        ("outrelay-relay-tls", "relay"),
        ("outrelay-agent-provider-tls", "provider"),
        ("outrelay-agent-consumer-tls", "consumer"),
    ]
    docs = [
        secret_yaml(
            secret, config.namespace, str(identities.get(name, "")), *pems[name], ca.cert_pem
        )
        for secret, name in secrets
    ]
    # The Secrets carry private keys: the file is as private as a .key file.
    bundle.files.append(write_private(out / "secrets.yaml", "---\n".join(docs).encode()))
    return bundle
