"""The relay shell in-process with a fake controller: start-up, heartbeat, stop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from outrelay.observe import Registry
from outrelay.proto import registry_pb2
from outrelay.relay.config import RelayConfig
from outrelay.relay.errors import ControllerError
from outrelay.relay.server import Relay, StartError


class FakeClient:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail
        self.upserts = asyncio.Event()
        self.closed = False

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        self.calls.append((method, request))
        if self.fail:
            raise ControllerError("down", status="UNAVAILABLE")
        if method == "UpsertRelay" and sum(m == "UpsertRelay" for m, _ in self.calls) >= 3:
            self.upserts.set()
        return registry_pb2.UpsertRelayResponse()

    async def close(self) -> None:
        self.closed = True


def _config(pki: Path, **kw: Any) -> RelayConfig:
    return RelayConfig(
        listen="127.0.0.1:0",
        cert=str(pki / "relay-r1.crt"),
        key=str(pki / "relay-r1.key"),
        ca=str(pki / "ca.crt"),
        debug_listen="",
        relay_id="r1",
        **kw,
    )


def test_heartbeat_and_ready_file(dev_bundle: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"

    async def main() -> FakeClient:
        client = FakeClient()
        relay = Relay(
            _config(dev_bundle, heartbeat=0.05, ready_file=str(ready)),
            metrics=Registry(),
            client=client,  # type: ignore[arg-type]
        )
        await relay.start()
        try:
            assert ready.exists() and relay.ready
            await asyncio.wait_for(client.upserts.wait(), 5)
        finally:
            await relay.stop()
        return client

    client = asyncio.run(main())
    method, request = client.calls[0]
    assert method == "UpsertRelay" and request.id == "r1" and request.region == "local"
    assert request.endpoint.startswith("127.0.0.1:") and not request.endpoint.endswith(":0")
    assert client.closed


def test_upsert_failure_is_start_error(dev_bundle: Path) -> None:
    async def main() -> None:
        relay = Relay(_config(dev_bundle), metrics=Registry(), client=FakeClient(fail=True))  # type: ignore[arg-type]
        try:
            with pytest.raises(StartError, match="UpsertRelay"):
                await relay.start()
        finally:
            await relay.stop()

    asyncio.run(main())
