"""The relay process's life: --no-policy mode, clean SIGTERM, start-up failures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from outrelay.controller.testing import ControllerProcess
from outrelay.orp import FrameType
from outrelay.proto import registry_pb2 as rp
from outrelay.proto import registry_pb2_grpc as rg
from outrelay.relay.testing import RelayProcess, echo_provider

from .conftest import dial, run_async

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _relay(ctl: ControllerProcess, *args: str, controller: str | None = None) -> RelayProcess:
    pki = ctl.pki
    return RelayProcess(
        ctl.workdir,
        cert=pki / "relay-r1.crt",
        key=pki / "relay-r1.key",
        ca=pki / "ca.crt",
        controller=controller or ctl.target,
        args=list(args),
        name=f"relay-{time.monotonic_ns()}",
    )


def test_no_policy_splice_then_sigterm_deregisters(ctl: ControllerProcess) -> None:  # A1
    relay = _relay(ctl, "--no-policy")
    pki = ctl.pki
    try:
        relay.start()

        async def main() -> None:
            provider = await dial(relay, pki, "provider")
            ctl.allow_bind(provider.uri, "svc-echo")
            assert (await provider.register_bound("svc-echo")).type == FrameType.REGISTER_ACK
            task = asyncio.create_task(echo_provider(provider))
            consumer = await dial(relay, pki, "consumer")
            stream = consumer.open("svc-echo")
            stream.write(b"hello via relay")
            assert await stream.read_exactly(15, timeout=3) == b"hello via relay"
            task.cancel()

        run_async(main, 30)
        assert relay.stop() == 0
        assert "relay stopped" in relay.log()
    finally:
        relay.kill()


def test_sigterm_deregisters_connected_agents(ctl: ControllerProcess) -> None:
    relay = _relay(ctl, "--no-policy")
    pki = ctl.pki
    reg = rg.RegistryStub(ctl.channel("admin"))
    req = rp.ResolveRequest(tenant="acme", service_name="svc-stop")
    try:
        relay.start()

        async def main() -> None:
            agent = await dial(relay, pki, "provider")
            ctl.allow_bind(agent.uri, "svc-stop")
            assert (await agent.register_bound("svc-stop")).type == FrameType.REGISTER_ACK
            assert reg.Resolve(req, timeout=5).providers
            stopped = await asyncio.to_thread(relay.stop)
            assert stopped == 0
            await agent.wait_closed()

        run_async(main, 30)
        assert not reg.Resolve(req, timeout=5).providers
    finally:
        relay.kill()


def test_controller_unreachable_waits_then_sigterm_exits_0(ctl: ControllerProcess) -> None:
    """Before: exit 1 after 0.5 s. Now the relay waits (a line per attempt) until stopped."""
    relay = _relay(ctl, "--no-policy", controller="127.0.0.1:1")
    try:
        relay.spawn()
        relay.wait_log("waiting for controller 127.0.0.1:1: ", count=2, timeout=30)
        assert relay.alive() and not relay.ready_file.exists()
        assert relay.stop() == 0
    finally:
        relay.kill()


def test_missing_credentials_exit_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "outrelay", "relay", "--cert", "x.pem"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "--key, --ca required" in out.stderr


def test_unreadable_certificate_exit_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "outrelay",
            "relay",
            "--cert",
            "a",
            "--key",
            "b",
            "--ca",
            "c",
            "--no-policy",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr == "Error: --cert a: No such file or directory\n"
