"""Fixtures for agent tests: a dev PKI bundle and a fake relay."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from outrelay.agent import AgentConfig
from outrelay.transport import TransportConfig


@dataclass
class DevPKI:
    dir: Path

    def relay_config(self) -> TransportConfig:
        d = self.dir
        return TransportConfig(cert=d / "relay-r1.crt", key=d / "relay-r1.key", ca=d / "ca.crt")

    def agent_config(self, who: str, relays: list[str], **kw: Any) -> AgentConfig:
        d = self.dir
        return AgentConfig(
            relays=tuple(relays),
            cert=d / f"agent-{who}.crt",
            key=d / f"agent-{who}.key",
            ca=d / "ca.crt",
            **kw,
        )


@pytest.fixture(scope="session")
def dev_pki(dev_bundle: Path) -> DevPKI:
    return DevPKI(dev_bundle)
