"""Fixtures for transport tests: a throw-away PKI and configurations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from outrelay.transport import TransportConfig

from .certs import Leaf, TestCA


@dataclass
class PKI:
    ca: TestCA
    other_ca: TestCA
    server: Leaf
    client: Leaf

    def server_config(self, **kw: Any) -> TransportConfig:
        return TransportConfig(
            cert=self.server.cert_path, key=self.server.key_path, ca=self.ca.cert_path, **kw
        )

    def client_config(self, leaf: Leaf | None = None, /, **kw: Any) -> TransportConfig:
        leaf = leaf or self.client
        return TransportConfig(cert=leaf.cert_path, key=leaf.key_path, ca=self.ca.cert_path, **kw)

    def anonymous_config(self, **kw: Any) -> TransportConfig:
        return TransportConfig(cert=None, key=None, ca=self.ca.cert_path, **kw)

    def bad_client_config(self, case: str) -> TransportConfig:
        """A client configuration breaking one rule: ``no_cert``, ``self_signed``,
        ``other_ca``, ``expired``, ``no_client_auth`` or ``no_uri``."""
        if case == "no_cert":
            return self.anonymous_config()
        leaf = {
            "self_signed": lambda: self.ca.self_signed(f"bad-{case}"),
            "other_ca": lambda: self.other_ca.issue(f"bad-{case}"),
            "expired": lambda: self.ca.expired(f"bad-{case}"),
            "no_client_auth": lambda: self.ca.without_client_auth(f"bad-{case}"),
            "no_uri": lambda: self.ca.issue(f"bad-{case}", uri=None),
        }[case]()
        return self.client_config(leaf)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory: Path = tmp_path_factory.mktemp("pki")
    ca = TestCA(directory)
    other = TestCA(directory, "other-ca")
    server = ca.issue("relay", uri="outrelay://eu/relay/r1")
    client = ca.issue("agent")
    return PKI(ca=ca, other_ca=other, server=server, client=client)
