"""Run a real controller process for tests (and other components' e2e tests).

``dev_pki(dir)`` writes a dev bundle (``outrelay pki dev``); ``ControllerProcess``
starts ``python -m outrelay controller`` on ephemeral ports with a real
database file, waits for its ``--ready-file`` with a deadline, and hands out
mTLS channels per role — a dev-bundle leaf by name (``"admin"``, ``"relay"``)
or any identity URI (``"outrelay://other/admin/ops"``), whose leaf is then
issued by the bundle's CA on first use. Always ``stop()``/``kill()`` it in a
finalizer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from outrelay.identity import parse
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


class ControllerProcess:
    """``outrelay controller`` as a child process."""

    def __init__(
        self, workdir: Path, pki: Path, *, db: Path | None = None, args: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        self.pki = pki
        self.db = db or workdir / "controller.db"
        self.args = list(args)
        self.ready_file = workdir / "ready.json"
        self.log_path = workdir / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: dict[str, str] = {}

    def start(self, timeout: float = 20.0) -> ControllerProcess:
        """Start and wait until it serves; raises RuntimeError if it dies or times out."""
        self.ready_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "outrelay",
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
            str(self.pki / "controller.crt"),
            "--key",
            str(self.pki / "controller.key"),
            "--ca",
            str(self.pki / "ca.crt"),
            "--ready-file",
            str(self.ready_file),
            *self.args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTRELAY_")}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited {self.proc.returncode}:\n{self.log()}")
            if self.ready_file.exists():
                self.addresses = json.loads(self.ready_file.read_text())
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"controller not ready after {timeout}s:\n{self.log()}")

    @property
    def target(self) -> str:
        """The mTLS gRPC address."""
        return self.addresses["grpc"]

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

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
        options = [(k.replace("__", "."), v) for k, v in opts.items()]
        return grpc.secure_channel(target or self.target, self.credentials(role), options=options)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); return the exit code."""
        if self.proc is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
