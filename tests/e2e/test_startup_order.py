"""Fail closed, start in any order (issue 12, item 9): real processes on 127.0.0.1.

Each test reproduces a default a new user tripped over and shows the new
behaviour:

* a relay without ``--tenant`` enforced nothing; now it refuses to start
  (exit 2) unless ``--no-policy``, which it then announces in a WARNING line
  and in ``/metrics``;
* ``--relay-id`` defaulted to the listen address, which the controller
  refused; now it is the id in the relay certificate, and a different one is
  a usage error;
* a relay whose controller was not up exited 1; now it waits (one line per
  attempt) and serves no agent until it has the policy snapshot;
* an agent with no relay up exited 1; now it waits with its reconnect
  backoff (``--exit-on-failure``: exit 1);
* a consumer's local connection hung while no session was up; now it is
  closed at once.

Relays and agents dial fixed ports (picked free) so that each side can be
started before the other.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from outrelay.agent.testing import free_port
from outrelay.childproc import child_env
from outrelay.controller.testing import ControllerProcess, dev_pki
from outrelay.proto import policy_pb2 as pp
from outrelay.proto import policy_pb2_grpc as pg
from outrelay.proto import registry_pb2 as rp
from outrelay.proto import registry_pb2_grpc as rg
from outrelay.relay.server import NOT_READY
from outrelay.relay.testing import ProbeAgent, RelayProcess
from outrelay.transport import HandshakeError

from .conftest import AgentProcess, exchange, run_async

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TENANT = "acme"
#: "At once": a local connection with no session up is closed well within this.
CLOSE_AT_ONCE_S = 0.5


def _allow_all(ctl: ControllerProcess) -> None:
    rule = pp.PolicyRule(
        id="allow-all",
        tenant=TENANT,
        caller_pattern="*",
        target_pattern="*",
        decision=pp.DECISION_ALLOW,
    )
    with ctl.channel("admin") as admin:
        stub = pg.PolicyStub(admin)
        if not any(r.id == rule.id for r in stub.ListPolicies(
            pp.ListPoliciesRequest(tenant=TENANT), timeout=5
        ).rules):  # fmt: skip
            stub.AddPolicy(pp.AddPolicyRequest(rule=rule), timeout=5)
            ctl.allow_bind("*", "svc-echo", tenant=TENANT)


def _relay(work: Path, pki: Path, controller: str, *args: str, name: str = "relay") -> RelayProcess:
    return RelayProcess(
        work,
        cert=pki / "relay-r1.crt",
        key=pki / "relay-r1.key",
        ca=pki / "ca.crt",
        controller=controller,
        args=list(args),
        name=f"{name}-{time.monotonic_ns()}",
    )


def _agent(
    work: Path, pki: Path, who: str, relay_port: int, *args: str, start: bool = True
) -> AgentProcess:
    argv = [
        "--relay", f"127.0.0.1:{relay_port}",
        "--cert", str(pki / f"agent-{who}.crt"),
        "--key", str(pki / f"agent-{who}.key"),
        "--ca", str(pki / "ca.crt"),
        *args,
    ]  # fmt: skip
    agent = AgentProcess(work, f"{who}-{time.monotonic_ns()}", argv)
    if start:
        return agent.start()
    agent.spawn()
    return agent


def _http(addr: str, path: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{addr}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _gauge(addr: str, name: str) -> float:
    _, text = _http(addr, "/metrics")
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match[1])


def _run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outrelay", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
        check=False,
    )


def _closed_within(addr: tuple[str, int], payload: bytes) -> float:
    """Connect, send ``payload``; seconds until the other side closes (EOF or reset)."""
    t0 = time.monotonic()
    with socket.create_connection(addr, timeout=5) as sock:
        sock.settimeout(5)
        try:
            sock.sendall(payload)
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        assert data == b"", f"served while no session was up: {data[:80]!r}"
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """A controller with an allow-all rule for ``acme``."""
    work = tmp_path_factory.mktemp("startup")
    proc = ControllerProcess(work, dev_pki(work / "pki", tenant=TENANT))
    try:
        proc.start()
        _allow_all(proc)
        yield proc
    finally:
        proc.kill()


# -- the relay -----------------------------------------------------------------


def test_relay_without_tenant_refuses_to_start(ctl: ControllerProcess) -> None:
    """Before: no --tenant = no policy, no audit, GET served with no rule. Now: exit 2."""
    pki = ctl.pki
    tls = ["--cert", str(pki / "relay-r1.crt"), "--key", str(pki / "relay-r1.key")]
    done = _run_cli(
        "relay", *tls, "--ca", str(pki / "ca.crt"), "--controller", ctl.target,
        "--listen", "127.0.0.1:0", "--debug-listen", "",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if "--tenant" in ln]
    assert "--no-policy" in line


def test_relay_no_policy_says_so_at_start_and_in_metrics(ctl: ControllerProcess) -> None:
    open_relay = _relay(ctl.workdir, ctl.pki, ctl.target, "--no-policy", name="open")
    closed_relay = _relay(ctl.workdir, ctl.pki, ctl.target, "--tenant", TENANT, name="closed")
    try:
        open_relay.start()
        warning = [ln for ln in open_relay.log().splitlines() if "WARNING: --no-policy" in ln]
        assert len(warning) == 1 and "level=WARN" in warning[0], open_relay.log_tail()
        assert _gauge(open_relay.addresses["debug"], "outrelay_relay_policy_enforced") == 0
        closed_relay.start()
        assert "WARNING" not in closed_relay.log()
        assert _gauge(closed_relay.addresses["debug"], "outrelay_relay_policy_enforced") == 1
    finally:
        open_relay.kill()
        closed_relay.kill()


def test_relay_id_defaults_to_the_certificate(ctl: ControllerProcess) -> None:
    """Before: the default was --listen, refused by the controller for relay r1. Now: r1."""
    relay = _relay(ctl.workdir, ctl.pki, ctl.target, "--tenant", TENANT, name="noid")
    try:
        relay.start()
        assert relay.addresses["relay_id"] == "r1"
        with ctl.channel("admin") as admin:
            relays = rg.RegistryStub(admin).ListRelays(rp.ListRelaysRequest(), timeout=5).relays
        assert any(r.id == "r1" and r.endpoint == relay.addresses["quic"] for r in relays)
    finally:
        relay.kill()


def test_relay_id_differing_from_the_certificate_is_a_usage_error(
    ctl: ControllerProcess,
) -> None:
    pki = ctl.pki
    done = _run_cli(
        "relay", "--cert", str(pki / "relay-r1.crt"), "--key", str(pki / "relay-r1.key"),
        "--ca", str(pki / "ca.crt"), "--controller", ctl.target, "--tenant", TENANT,
        "--listen", "127.0.0.1:0", "--debug-listen", "", "--relay-id", "127.0.0.1:7443",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if "--relay-id" in ln]
    assert "differs from the certificate's relay id 'r1'" in line


def test_relay_started_before_the_controller_waits_then_serves(
    tmp_path: Path, echo_backend: str
) -> None:
    """Relay first, then the controller, then agents: traffic flows.

    Before: the relay exited 1 after 0.5 s. Now it waits (a line per attempt,
    /readyz 503) and refuses every agent with the reason until it has the
    policy snapshot; a consumer that asks meanwhile is refused, not served.
    """
    pki = dev_pki(tmp_path / "pki", tenant=TENANT)
    ctl_port, relay_port, debug_port = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    controller = f"127.0.0.1:{ctl_port}"
    relay = _relay(
        tmp_path, pki, controller, "--tenant", TENANT,
        "--listen", f"127.0.0.1:{relay_port}", "--debug-listen", f"127.0.0.1:{debug_port}",
    )  # fmt: skip
    ctl = ControllerProcess(tmp_path, pki, args=["--listen", controller])
    consume_port = free_port()
    agents: list[AgentProcess] = []
    try:
        relay.spawn()
        relay.wait_log(f"waiting for controller {controller}: ", count=2, timeout=30)
        assert relay.alive()
        assert re.search(r"retry in \d+(\.\d+)?s", relay.log())
        debug = f"127.0.0.1:{debug_port}"
        assert _http(debug, "/readyz")[0] == 503
        assert _gauge(debug, "outrelay_controller_up") == 0

        # An agent that connects now is refused with the reason, before HELLO.
        async def probe() -> str:
            try:
                agent = await ProbeAgent.dial(
                    ("127.0.0.1", relay_port),
                    pki / "agent-consumer.crt",
                    pki / "agent-consumer.key",
                    pki / "ca.crt",
                )
            except HandshakeError as exc:  # closed as the handshake completes
                return str(exc)
            return (await agent.wait_closed(10)).reason

        assert run_async(probe) == NOT_READY

        # A consumer started now waits; its local GET is closed at once, with the reason.
        consumer = _agent(
            tmp_path, pki, "consumer", relay_port,
            "--consume", f"svc-echo=127.0.0.1:{consume_port}", start=False,
        )  # fmt: skip
        agents.append(consumer)
        consumer.wait_log("agent: waiting for a relay: ", timeout=30)
        took = _closed_within(("127.0.0.1", consume_port), b"GET / HTTP/1.0\r\n\r\n")
        assert took < CLOSE_AT_ONCE_S, took
        consumer.wait_log("stream to svc-echo refused: no relay session (")
        assert "relay not ready" in consumer.log().split("stream to svc-echo refused")[1]

        ctl.start()
        _allow_all(ctl)
        relay.wait_ready(30)
        assert "controller reachable" in relay.log()
        assert _http(debug, "/readyz")[0] == 200
        assert _gauge(debug, "outrelay_connections_refused_not_ready_total") >= 2
        provider = _agent(
            tmp_path, pki, "provider", relay_port, "--expose", f"svc-echo={echo_backend}"
        )
        agents.append(provider)
        consumer.wait_ready(60)
        assert exchange(("127.0.0.1", consume_port), b"after the controller came up") == (
            b"after the controller came up"
        )
    finally:
        for agent in agents:
            agent.kill()
        relay.kill()
        ctl.kill()


# -- the agent -----------------------------------------------------------------


def test_agent_started_before_the_relay_waits_then_connects(
    ctl: ControllerProcess, echo_backend: str
) -> None:
    """Before: an agent with no relay up exited 1 at once. Now it retries with its backoff."""
    pki = ctl.pki
    relay_port = free_port(socket.SOCK_DGRAM)
    provider = _agent(
        ctl.workdir, pki, "provider", relay_port, "--expose", f"svc-echo={echo_backend}",
        start=False,
    )  # fmt: skip
    relay = _relay(
        ctl.workdir, pki, ctl.target, "--tenant", TENANT, "--listen", f"127.0.0.1:{relay_port}"
    )
    consumer: AgentProcess | None = None
    try:
        provider.wait_log("agent: waiting for a relay: ", count=2, timeout=30)
        assert provider.alive()
        lines = [ln for ln in provider.log().splitlines() if "waiting for a relay" in ln]
        assert "retry in 1s" in lines[0] and "retry in 2s" in lines[1], lines
        relay.start()
        provider.wait_ready(60)
        consumer = _agent(
            ctl.workdir, pki, "consumer", relay_port, "--consume", "svc-echo=127.0.0.1:0"
        )
        assert exchange(consumer.consume_addr("svc-echo"), b"relay came second") == (
            b"relay came second"
        )
    finally:
        if consumer is not None:
            consumer.kill()
        provider.kill()
        relay.kill()


def test_agent_exit_on_failure_exits_1_with_one_line(ctl: ControllerProcess) -> None:
    agent = _agent(
        ctl.workdir, ctl.pki, "consumer", free_port(socket.SOCK_DGRAM), "--exit-on-failure",
        start=False,
    )  # fmt: skip
    try:
        assert agent.proc is not None
        assert agent.proc.wait(30) == 1
        errors = [ln for ln in agent.log().splitlines() if not ln.startswith("time=")]
        errors = [ln for ln in errors if ln.strip()]
        assert len(errors) == 1 and "all relays failed" in errors[0], agent.log()
        assert "waiting for a relay" not in agent.log()
    finally:
        agent.kill()


def test_consumer_local_connection_closed_at_once_while_relay_down(
    ctl: ControllerProcess, echo_backend: str
) -> None:
    """Before: with the relay down a local connection hung (10 s). Now: closed at once."""
    pki = ctl.pki
    relay_port = free_port(socket.SOCK_DGRAM)
    args = ["--tenant", TENANT, "--listen", f"127.0.0.1:{relay_port}"]
    relay = _relay(ctl.workdir, pki, ctl.target, *args)
    agents: list[AgentProcess] = []
    second: RelayProcess | None = None
    try:
        relay.start()
        provider = _agent(
            ctl.workdir, pki, "provider", relay_port, "--expose", f"svc-echo={echo_backend}"
        )
        agents.append(provider)
        consumer = _agent(
            ctl.workdir, pki, "consumer", relay_port, "--consume", "svc-echo=127.0.0.1:0"
        )
        agents.append(consumer)
        addr = consumer.consume_addr("svc-echo")
        assert exchange(addr, b"before") == b"before"

        assert relay.stop() == 0
        consumer.wait_log("session lost; reconnecting", timeout=30)
        for _ in range(3):
            took = _closed_within(addr, b"GET / HTTP/1.0\r\n\r\n")
            assert took < CLOSE_AT_ONCE_S, took
        consumer.wait_log("stream to svc-echo refused: no relay session (", count=3)

        up_before = consumer.log().count("relay session up")
        second = _relay(ctl.workdir, pki, ctl.target, *args, name="relay-again").start()
        consumer.wait_log("relay session up", up_before + 1, timeout=60)
        provider.wait_log("relay session up", 2, timeout=60)
        got = b""
        deadline = time.monotonic() + 30
        while got != b"after" and time.monotonic() < deadline:  # provider replay may lag
            got = exchange(addr, b"after")
        assert got == b"after"
    finally:
        for agent in agents:
            agent.kill()
        relay.kill()
        if second is not None:
            second.kill()
