"""Agents as real processes: controller + relay + provider and consumer agents on 127.0.0.1.

Policy: allow-all plus a deny rule for ``svc-denied`` (DENY wins). The
provider exposes ``svc-echo`` (a TCP echo backend that half-closes after
EOF) and ``svc-down`` (a port nobody listens on).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from outrelay.agent import Agent, AgentConfig, StreamRejected
from outrelay.agent.testing import AgentProcess, free_port
from outrelay.childproc import ComponentProcess
from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.identity import peer_uri
from outrelay.proto import policy_pb2 as pp
from outrelay.proto import policy_pb2_grpc as pg
from outrelay.relay.testing import RelayProcess

from .conftest import exchange

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TENANT = "acme"


@dataclass
class Env:
    work: Path
    pki: Path
    ctl: ControllerProcess
    relay: RelayProcess
    relay_port: int
    provider: AgentProcess
    consumer: AgentProcess


def _relay(work: Path, pki: Path, ctl: ControllerProcess, port: int, name: str) -> RelayProcess:
    return RelayProcess(
        work,
        cert=pki / "relay-r1.crt",
        key=pki / "relay-r1.key",
        ca=pki / "ca.crt",
        controller=ctl.target,
        args=["--relay-id", "r1", "--tenant", TENANT, "--listen", f"127.0.0.1:{port}"],
        name=name,
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, echo_backend: str) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("agentproc")
    pki = dev_pki(work / "pki")
    ctl = ControllerProcess(work, pki)
    procs: list[ComponentProcess] = []
    try:
        ctl.start()
        admin = ctl.channel("admin")
        stub = pg.PolicyStub(admin)
        for rule_id, target, decision in (
            ("allow-all", "*", pp.DECISION_ALLOW),
            ("deny-denied", "svc-denied", pp.DECISION_DENY),
        ):
            rule = pp.PolicyRule(
                id=rule_id,
                tenant=TENANT,
                caller_pattern="*",
                target_pattern=target,
                decision=decision,
            )
            stub.AddPolicy(pp.AddPolicyRequest(rule=rule), timeout=5)
        admin.close()
        # closed world for providers too: each registration needs its bind rule
        ctl.allow_bind(peer_uri((pki / "agent-provider.crt").read_bytes()), "svc-echo", "svc-down")
        ctl.allow_bind(peer_uri((pki / "agent-consumer.crt").read_bytes()), "svc-sdk")
        relay_port = free_port()
        relay = _relay(work, pki, ctl, relay_port, "relay-1")
        procs.append(relay)
        relay.start()
        relay_addr = f"127.0.0.1:{relay_port}"
        common = ["--relay", relay_addr, "--ca", str(pki / "ca.crt"), "--log-level", "debug"]
        provider = AgentProcess(
            work,
            "provider",
            [
                *common,
                "--cert",
                str(pki / "agent-provider.crt"),
                "--key",
                str(pki / "agent-provider.key"),
                "--expose",
                f"svc-echo={echo_backend}",
                "--expose",
                f"svc-down=127.0.0.1:{free_port()}",
            ],
        )
        procs.append(provider)
        provider.start()
        consumer = AgentProcess(
            work,
            "consumer",
            [
                *common,
                "--cert",
                str(pki / "agent-consumer.crt"),
                "--key",
                str(pki / "agent-consumer.key"),
                *[
                    arg
                    for svc in ("svc-echo", "svc-denied", "svc-down", "svc-missing")
                    for arg in ("--consume", f"{svc}=127.0.0.1:0")
                ],
            ],
        )
        procs.append(consumer)
        consumer.start()
        yield Env(work, pki, ctl, relay, relay_port, provider, consumer)
    finally:
        for proc in reversed(procs):
            proc.kill()
        ctl.kill()


def test_ready_file_and_uri_default(env: Env) -> None:
    info = env.consumer.addresses
    assert info["uri"] == f"outrelay://{TENANT}/agent/00000000-0000-0000-0000-000000000002"
    assert set(info["consume"]) == {"svc-echo", "svc-denied", "svc-down", "svc-missing"}
    assert all(not a.endswith(":0") for a in info["consume"].values())


def test_byte_exact_both_ways_with_half_close(env: Env) -> None:
    payload = os.urandom(2 * 1024 * 1024 + 3)
    got = exchange(env.consumer.consume_addr("svc-echo"), payload)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    # A small one-shot request, `printf ... | nc` style.
    assert exchange(env.consumer.consume_addr("svc-echo"), b"ping\n") == b"ping\n"


def test_policy_deny_closes_local_connection(env: Env) -> None:
    assert exchange(env.consumer.consume_addr("svc-denied"), b"secret") == b""
    env.consumer.wait_log("rejected: 403")


def test_unknown_service_is_404(env: Env) -> None:
    assert exchange(env.consumer.consume_addr("svc-missing"), b"x") == b""
    env.consumer.wait_log("rejected: 404 service not found")


def test_backend_down_is_502_at_the_provider(env: Env) -> None:
    assert exchange(env.consumer.consume_addr("svc-down"), b"x") == b""
    env.provider.wait_log("rejecting incoming stream: 502 dial tcp 127.0.0.1:")
    env.consumer.wait_log("rejected: 503 provider rejected")


def test_sdk_inside_one_asyncio_program(env: Env) -> None:
    pki = env.pki
    relays = (f"127.0.0.1:{env.relay_port}",)

    def config(who: str) -> AgentConfig:
        return AgentConfig(
            relays=relays,
            cert=pki / f"agent-{who}.crt",
            key=pki / f"agent-{who}.key",
            ca=pki / "ca.crt",
        )

    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(data.upper())
        writer.write_eof()

    async def main() -> None:
        # The provider identity is already used by the provider process; the
        # relay keeps one connection per URI, so this program plays both
        # roles with the consumer identity and a service of its own.
        async with Agent(config("consumer")) as agent:
            await agent.serve("svc-sdk", upper)
            reader, writer = await agent.open_connection("svc-sdk")
            writer.write(b"hello sdk")
            writer.write_eof()
            assert await reader.read() == b"HELLO SDK"
            writer.close()
            with pytest.raises(StreamRejected) as info:
                await agent.open_connection("svc-denied")
            assert info.value.code == 403

    asyncio.run(asyncio.wait_for(main(), 60))
    # The consumer process was displaced from the relay's URI map; let it reconnect.


@pytest.mark.slow
def test_reconnect_after_relay_restart(env: Env) -> None:
    before_p = env.provider.log().count("relay session up")
    before_c = env.consumer.log().count("relay session up")
    assert env.relay.stop() == 0
    env.provider.wait_log("session lost; reconnecting")
    relay = _relay(env.work, env.pki, env.ctl, env.relay_port, "relay-2")
    try:
        relay.start()
        env.provider.wait_log("relay session up", before_p + 1, timeout=60)
        env.consumer.wait_log("relay session up", before_c + 1, timeout=60)
        payload = os.urandom(100_000)
        got = b""
        deadline = time.monotonic() + 30
        # Registration replay reaches the controller before the REGISTER_ACK,
        # so the first stream after "session up" must work; retry only in
        # case the consumer raced ahead of the provider's replay.
        while got != payload and time.monotonic() < deadline:
            got = exchange(env.consumer.consume_addr("svc-echo"), payload)
        assert got == payload
        assert env.consumer.stop() == 0
        assert env.provider.stop() == 0
    finally:
        relay.kill()
        with contextlib.suppress(Exception):
            env.consumer.kill()
            env.provider.kill()
