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
    """Answers UpsertRelay; the first ``fail`` calls fail with ``status``."""

    def __init__(self, fail: int = 0, status: str = "UNAVAILABLE") -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail
        self.status = status
        self.upserts = asyncio.Event()
        self.closed = False

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        self.calls.append((method, request))
        if len(self.calls) <= self.fail:
            raise ControllerError("down", status=self.status)
        if method == "UpsertRelay" and sum(m == "UpsertRelay" for m, _ in self.calls) >= 3:
            self.upserts.set()
        return registry_pb2.UpsertRelayResponse()

    async def wait_ready(self, timeout: float) -> bool:
        return True  # "the channel connected": retry at once

    async def close(self) -> None:
        self.closed = True


def _config(pki: Path, **kw: Any) -> RelayConfig:
    kw.setdefault("no_policy", True)
    return RelayConfig(
        listen="127.0.0.1:0",
        cert=str(pki / "relay-r1.crt"),
        key=str(pki / "relay-r1.key"),
        ca=str(pki / "ca.crt"),
        debug_listen="",
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


def test_start_waits_for_an_unreachable_controller(
    dev_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three UNAVAILABLE answers: the relay logs each attempt and goes ready on the fourth."""

    async def main() -> Relay:
        relay = Relay(_config(dev_bundle), metrics=Registry(), client=FakeClient(fail=3))  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(relay.start(), 10)
            assert relay.ready and relay.controller_up
        finally:
            await relay.stop()
        return relay

    with caplog.at_level("INFO", logger="outrelay.relay"):
        relay = asyncio.run(main())
    waits = [r.getMessage() for r in caplog.records if "waiting for controller" in r.getMessage()]
    assert len(waits) == 3, waits
    assert waits[0] == "waiting for controller 127.0.0.1:7444: down; retry in 0.5s"
    assert waits[1].endswith("retry in 1s") and waits[2].endswith("retry in 2s")
    assert relay.metrics.snapshot()["gauges"]["controller_up"] == 1


def test_upsert_refusal_is_start_error(dev_bundle: Path) -> None:
    """A refusal is no outage: the relay does not wait, it stops with the reason."""

    async def main() -> None:
        client = FakeClient(fail=1, status="PERMISSION_DENIED")
        relay = Relay(_config(dev_bundle), metrics=Registry(), client=client)  # type: ignore[arg-type]
        try:
            with pytest.raises(StartError, match="UpsertRelay"):
                await relay.start()
        finally:
            await relay.stop()

    asyncio.run(main())


def test_no_policy_gauge_and_warning(dev_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main(**kw: Any) -> Registry:
        metrics = Registry()
        relay = Relay(_config(dev_bundle, **kw), metrics=metrics, client=FakeClient())  # type: ignore[arg-type]
        assert relay.relay_id == "r1"  # from the certificate's outrelay://acme/relay/r1
        if kw.get("no_policy"):
            await relay.start()
            await relay.stop()
        return metrics

    with caplog.at_level("WARNING", logger="outrelay.relay"):
        off = asyncio.run(main(no_policy=True))
    assert off.snapshot()["gauges"]["relay_policy_enforced"] == 0
    assert any(r.getMessage().startswith("WARNING: --no-policy") for r in caplog.records)
    on = asyncio.run(main(no_policy=False, tenant="acme"))
    assert on.snapshot()["gauges"]["relay_policy_enforced"] == 1
