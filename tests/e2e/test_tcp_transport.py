"""The TCP + TLS + yamux path end to end: a real relay with ``--listen-tcp``, real agents.

The relay (``stack``, with ``--listen-tcp 127.0.0.1:0``) serves QUIC and TCP
agents at once. A provider and a consumer on ``--transport tcp`` carry a GET
and 64 MiB each way; a QUIC consumer reaches the TCP provider and a TCP
consumer a QUIC provider (the relay splices any mix); an agent whose
``--relay`` has nobody listening falls back to ``--relay-tcp`` at once
(happy eyeballs) and says so in its log.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from outrelay.agent import Agent, AgentConfig
from outrelay.agent.testing import free_port

from .conftest import AgentProcess, Stack, exchange, run_async

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MiB = 1024 * 1024
BODY = b"hello over tcp+tls+yamux\n" * 100


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_backend() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Controller + relay serving QUIC and TCP (``--listen-tcp``)."""
    s = Stack(tmp_path_factory.mktemp("tcpstack"))
    try:
        yield s.start(relay_args=["--listen-tcp", "127.0.0.1:0"])
    finally:
        s.close()


def tcp_addr(stack: Stack) -> str:
    assert stack.relay is not None
    host, port = stack.relay.tcp
    return f"{host}:{port}"


@dataclass
class World:
    stack: Stack
    provider: AgentProcess  # TCP, exposes echo + web
    consumer: AgentProcess  # TCP, consumes echo, web, echo-q
    quic_provider: AgentProcess  # QUIC, exposes echo-q
    quic_consumer: AgentProcess  # QUIC, consumes echo


@pytest.fixture(scope="module")
def world(stack: Stack, echo_backend: str, http_backend: str) -> Iterator[World]:
    stack.policy_add("allow-all", "*", "allow")
    tcp = ["--relay-tcp", tcp_addr(stack), "--transport", "tcp"]
    provider = stack.agent(
        "provider-tcp", who="provider", expose={"echo": echo_backend, "web": http_backend}, args=tcp
    )
    quic_provider = stack.agent(
        "provider-quic", expose={"echo-q": echo_backend}, args=["--transport", "quic"]
    )
    consumer = stack.agent(
        "consumer-tcp", who="consumer", consume=["echo", "web", "echo-q"], args=tcp
    )
    quic_consumer = stack.agent("consumer-quic", consume=["echo"], args=["--transport", "quic"])
    yield World(stack, provider, consumer, quic_provider, quic_consumer)


def test_tcp_relay_ready_file_and_agents_on_tcp(world: World) -> None:
    assert world.stack.relay is not None
    assert "tcp" in world.stack.relay.addresses
    assert world.provider.addresses["transport"] == "tcp"
    assert world.consumer.addresses["transport"] == "tcp"
    assert world.quic_provider.addresses["transport"] == "quic"
    assert world.provider.addresses["relay"] == tcp_addr(world.stack)


def test_tcp_get_through_tcp_agents(world: World) -> None:
    import urllib.request

    host, port = world.consumer.consume_addr("web")
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == BODY


def test_tcp_64mib_each_way_sha256_equal(world: World) -> None:
    """64 MiB up to the echo backend and the same 64 MiB back, over TCP legs only."""
    payload = os.urandom(64 * MiB)
    got = exchange(world.consumer.consume_addr("echo"), payload, timeout=120)
    assert len(got) == len(payload)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_mixed_quic_consumer_reaches_tcp_provider(world: World) -> None:
    payload = os.urandom(8 * MiB)
    got = exchange(world.quic_consumer.consume_addr("echo"), payload, timeout=60)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_mixed_tcp_consumer_reaches_quic_provider(world: World) -> None:
    payload = os.urandom(8 * MiB)
    got = exchange(world.consumer.consume_addr("echo-q"), payload, timeout=60)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_mixed_many_streams_byte_exact(world: World) -> None:
    """Sequential streams alternate between the mixes; each one byte-exact."""
    for i in range(40):
        consumer, service = [
            (world.consumer, "echo"),
            (world.quic_consumer, "echo"),
            (world.consumer, "echo-q"),
        ][i % 3]
        payload = os.urandom(1 + i * 997)
        assert exchange(consumer.consume_addr(service), payload, timeout=10) == payload


def test_fallback_quic_unreachable_session_up_within_1s_sdk(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody listens at --relay: QUIC fails at once (ICMP) and TCP carries the session."""
    stack = world.stack
    cert, key = stack.leaf("fallback-sdk")
    dead = f"127.0.0.1:{free_port()}"
    config = AgentConfig(
        relays=(dead,), relays_tcp=(tcp_addr(stack),), cert=cert, key=key, ca=stack.ca
    )

    async def main() -> tuple[float, str | None]:
        agent = Agent(config)
        started = time.monotonic()
        await agent.start()
        took = time.monotonic() - started
        transport = agent.transport
        await agent.stop()
        return took, transport

    with caplog.at_level(logging.INFO, logger="outrelay.agent"):
        took, transport = run_async(main)
    assert transport == "tcp"
    assert took < 1.0, f"session took {took:.3f} s"
    assert "tcp transport chosen" in caplog.text


def test_fallback_quic_unreachable_agent_process_logs_tcp(world: World) -> None:
    stack = world.stack
    cert, key = stack.leaf("fallback-proc")
    dead = f"127.0.0.1:{free_port()}"
    cmd = ["--relay", dead, "--relay-tcp", tcp_addr(stack), "--cert", str(cert)]
    cmd += ["--key", str(key), "--ca", str(stack.ca), "--consume", "echo=127.0.0.1:0"]
    agent = AgentProcess(stack.work, "fallback", cmd)
    stack.agents.append(agent)
    agent.start()
    assert agent.addresses["transport"] == "tcp"
    log = agent.log()
    assert "tcp transport chosen" in log
    assert exchange(agent.consume_addr("echo"), b"ping", timeout=10) == b"ping"


def test_auto_prefers_quic_when_both_answer(world: World) -> None:
    stack = world.stack
    cmd_args = ["--relay-tcp", tcp_addr(stack), "--consume", "echo=127.0.0.1:0"]
    agent = stack.agent("auto-both", args=cmd_args)
    assert agent.addresses["transport"] == "quic"
    assert exchange(agent.consume_addr("echo"), b"auto", timeout=10) == b"auto"
