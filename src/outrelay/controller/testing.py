"""Run a real controller process for tests (and other components' e2e tests).

``dev_pki(dir)`` writes a dev bundle (``outrelay pki dev``); ``ControllerProcess``
starts ``python -m outrelay controller`` on ephemeral ports with a real
database file, waits for its ``--ready-file`` with a deadline (a
:class:`~outrelay.childproc.ComponentProcess`), and hands out mTLS channels
per role — a dev-bundle leaf by name (``"admin"``, ``"relay"``)
or any identity URI (``"outrelay://other/admin/ops"``), whose leaf is then
issued by the bundle's CA on first use. ``allow_bind`` adds the bind rule a
provider needs before it may register a service (closed world). Always
``stop()``/``kill()`` it in a finalizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from outrelay.childproc import ComponentProcess
from outrelay.identity import CONTROLLER_NAME_OPTION, parse
from outrelay.pki.ca import CA, cert_pem
from outrelay.pki.csr import key_pem
from outrelay.pki.devbundle import DevBundleConfig, write_dev_bundle
from outrelay.pki.files import write_private, write_public

#: leaf name -> (cert file, key file) inside a dev bundle
LEAVES = {
    "relay": ("relay-r1.crt", "relay-r1.key"),
    "admin": ("admin-admin.crt", "admin-admin.key"),
    "agent": ("agent-consumer.crt", "agent-consumer.key"),
    "controller": ("controller.crt", "controller.key"),
}


def dev_pki(out: Path, tenant: str = "acme") -> Path:
    """Write a dev bundle (CA, controller, relay r1, agents, admin) into ``out``."""
    write_dev_bundle(DevBundleConfig(out=out, tenant=tenant, relay_id="r1"))
    return out


class ControllerProcess(ComponentProcess):
    """``outrelay controller`` as a child process (``<workdir>/controller.log``)."""

    def __init__(
        self, workdir: Path, pki: Path, *, db: Path | None = None, args: Sequence[str] = ()
    ) -> None:
        self.pki = pki
        self.db = db or workdir / "controller.db"
        super().__init__(
            "controller",
            [
                "controller",
                "--listen",
                "127.0.0.1:0",
                "--enroll-listen",
                "127.0.0.1:0",
                "--debug-listen",
                "127.0.0.1:0",
                "--db",
                str(self.db),
                "--cert",
                str(pki / "controller.crt"),
                "--key",
                str(pki / "controller.key"),
                "--ca",
                str(pki / "ca.crt"),
                *args,
            ],
            workdir,
        )

    @property
    def target(self) -> str:
        """The mTLS gRPC address."""
        return str(self.addresses["grpc"])

    def leaf(self, role: str) -> tuple[Path, Path]:
        """(cert, key) files of a dev-bundle leaf name or of an identity URI.

        A URI's leaf is issued by the bundle's CA the first time it is asked for.
        """
        if "://" not in role:
            cert_name, key_name = LEAVES[role]
            return self.pki / cert_name, self.pki / key_name
        identity = parse(role)
        stem = f"extra-{identity.role}-{identity.tenant}-{identity.id}"
        cert_path, key_path = self.pki / f"{stem}.crt", self.pki / f"{stem}.key"
        if not cert_path.exists():
            key, cert = CA.load(self.pki).issue(identity)
            write_private(key_path, key_pem(key))
            write_public(cert_path, cert_pem(cert))
        return cert_path, key_path

    def allow_bind(self, agent_uri: str, *services: str, tenant: str = "") -> list[str]:
        """Let ``agent_uri`` provide each of ``services`` (ALLOW bind rules); their ids.

        ``agent_uri`` may be a caller glob (``*``) when ``tenant`` is given.
        Added by an admin of that tenant (issued on first use).
        """
        from outrelay.proto import policy_pb2 as pp
        from outrelay.proto import policy_pb2_grpc as pg

        tenant = tenant or parse(agent_uri).tenant
        admin = f"outrelay://{tenant}/admin/ops"
        ids = []
        with self.channel(admin) as ch:
            stub = pg.PolicyStub(ch)
            for service in services:
                rule = pp.PolicyRule(
                    tenant=tenant,
                    caller_pattern=agent_uri,
                    target_pattern=service,
                    decision=pp.DECISION_ALLOW,
                    action=pp.RULE_ACTION_BIND,
                )
                ids.append(stub.AddPolicy(pp.AddPolicyRequest(rule=rule), timeout=10).id)
        return ids

    def credentials(self, role: str | None) -> grpc.ChannelCredentials:
        """Channel credentials with the leaf of ``role`` (None: no client certificate)."""
        ca = (self.pki / "ca.crt").read_bytes()
        if role is None:
            return grpc.ssl_channel_credentials(ca)
        cert, key = self.leaf(role)
        return grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes())

    def channel(
        self, role: str | None = "admin", *, target: str | None = None, **opts: Any
    ) -> grpc.Channel:
        """A blocking channel to the controller as ``role``."""
        options = [CONTROLLER_NAME_OPTION, *((k.replace("__", "."), v) for k, v in opts.items())]
        return grpc.secure_channel(target or self.target, self.credentials(role), options=options)
