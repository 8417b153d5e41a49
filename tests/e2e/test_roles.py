"""Peers are checked by role, everywhere (issue 12, finding 1), with real processes.

* A fake relay (``outrelay.transport.serve``) holding an *agent* certificate
  of the old blanket profile (serverAuth+clientAuth, DNS ``localhost``) is
  refused by a real ``outrelay agent`` (and by the SDK's ``Agent``) before a
  single application byte: the fake server sees no stream at all.
* ``--relay-uri`` pins the relay: another relay is refused, the pinned one works.
* A fake controller (gRPC on 127.0.0.1, serving a relay's or an old-profile
  agent's certificate, both valid for 127.0.0.1/localhost) is refused by the
  operator CLI, ``pki token``, ``enroll`` and a relay: exit 1, one line.
* The relay refuses an admin's certificate in the handshake, before any stream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from outrelay.agent import Agent, AgentConfig, ConnectFailed
from outrelay.childproc import child_env
from outrelay.identity import CONTROLLER_NAME
from outrelay.pki import CA, cert_pem, key_pem
from outrelay.pki.devbundle import PROVIDER_UUID
from outrelay.relay.testing import ProbeAgent, RelayProcess
from outrelay.transport import (
    Event,
    HandshakeError,
    Link,
    Server,
    StreamDataReceived,
    TransportConfig,
    serve,
)

from .conftest import AgentProcess, Stack, run_async, wait_for

pytestmark = pytest.mark.e2e

PROVIDER_URI = f"outrelay://acme/agent/{PROVIDER_UUID}"
#: What the agent says when the server it dialled is not a relay.
NOT_A_RELAY = (
    "expected a relay identity (outrelay://<region>/relay/<id>); "
    f"the server presented {PROVIDER_URI} (agent role)"
)
#: gRPC C-core log lines (``E1202 16:53:04.114229 ... file.cc:123] ...``).
CORE_LOG = re.compile(r"^[EWID]\d{4} \d\d:\d\d:\d\d\.\d+ ")


def old_profile_leaf(ca: CA, uri: str, directory: Path, stem: str) -> tuple[Path, Path]:
    """A leaf of the reference's blanket profile (every leaf: serverAuth+clientAuth,
    DNS ``localhost``, IP 127.0.0.1), which our CA no longer issues to agents.

    Built with cryptography so that the role check, not the profile, refuses it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(uri),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert_pem(cert))
    key_path.write_bytes(key_pem(key))
    return cert_path, key_path


def _own_lines(proc: AgentProcess, text: str) -> list[str]:
    """Lines of the agent's log (stderr) with ``text``, from OutRelay itself (not
    aioquic's ``quic`` logger, which also echoes the close reason)."""
    return [x for x in proc.log().splitlines() if text in x and "logger=quic" not in x]


class FakeRelay:
    """A QUIC server built from ``outrelay.transport.serve`` in its own thread and loop.

    It records every event of every connection that reached it, so a test can
    tell that a handshake happened and that no stream byte arrived.
    """

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self.config = TransportConfig(cert=cert, key=key, ca=ca)
        self.events: list[Event] = []
        self.links = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _on_link(self, link: Link) -> None:
        with self._lock:
            self.links += 1
        link.on_event = self._on_event

    def _on_event(self, link: Link, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def __enter__(self) -> FakeRelay:
        self._thread.start()
        start = serve("127.0.0.1", 0, self.config, self._on_link)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        server = self._server
        if server is not None:

            async def close() -> None:
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def addr(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.port}"

    def stream_data(self) -> list[StreamDataReceived]:
        with self._lock:
            return [e for e in self.events if isinstance(e, StreamDataReceived)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("roles"))
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture(scope="module")
def fake_relay(stack: Stack) -> Iterator[FakeRelay]:
    """A fake relay holding the provider agent's identity in an old-profile leaf."""
    cert, key = old_profile_leaf(CA.load(stack.pki), PROVIDER_URI, stack.work, "impostor")
    with FakeRelay(cert, key, stack.ca) as fake:
        yield fake


# -- the agent accepts only a relay ---------------------------------------------


def test_agent_process_refuses_a_fake_relay_holding_an_agent_certificate(
    stack: Stack, fake_relay: FakeRelay
) -> None:
    """Finding 1: the real agent refuses it before HELLO; its log names the reason."""
    cert, key = stack.leaf("consumer")
    agent = AgentProcess(
        stack.work,
        "agent-vs-impostor",
        ["--relay", fake_relay.addr, "--cert", str(cert), "--key", str(key), "--ca", str(stack.ca)],
    )
    agent.spawn()
    try:
        # The impostor passed every TLS check (chain, validity, serverAuth,
        # localhost: all the agent used to check); the role check refused it,
        # closing with access_denied (0x100 + 49) ...
        wait_for(lambda: _own_lines(agent, NOT_A_RELAY), 20, "the agent names the reason")
        assert "Connection close sent (code 0x131" in agent.log()
    finally:
        agent.kill()
    # ... and received not one stream byte: no HELLO, no OPEN_STREAM, no request
    assert fake_relay.stream_data() == []
    assert "HELLO_ACK" not in agent.log() and "relay session up" not in agent.log()


def test_sdk_agent_refuses_a_fake_relay_holding_an_agent_certificate(
    stack: Stack, fake_relay: FakeRelay
) -> None:
    """The same refusal in process, through ``outrelay.Agent``."""
    cert, key = stack.leaf("consumer")
    before = len(fake_relay.stream_data())

    async def main() -> None:
        config = AgentConfig(
            relays=(fake_relay.addr,), cert=cert, key=key, ca=stack.ca, exit_on_failure=True
        )
        agent = Agent(config)
        try:
            with pytest.raises(ConnectFailed, match=re.escape(NOT_A_RELAY)):
                await agent.start()
        finally:
            await agent.stop()

    run_async(main, 20)
    assert len(fake_relay.stream_data()) == before == 0


# -- --relay-uri pins the relay ---------------------------------------------------


def test_relay_uri_pin_refuses_another_relay_and_accepts_the_pinned_one(stack: Stack) -> None:
    cert, key = stack.leaf("consumer")
    base = ["--relay", stack.relay_addr, "--cert", str(cert), "--key", str(key)]
    base += ["--ca", str(stack.ca)]
    wrong = AgentProcess(
        stack.work, "pinned-r2", [*base, "--relay-uri", "outrelay://acme/relay/r2"]
    )
    wrong.spawn()
    try:
        pin_refused = (
            "expected the pinned URI outrelay://acme/relay/r2; "
            "the server presented outrelay://acme/relay/r1"
        )
        wait_for(lambda: _own_lines(wrong, pin_refused), 20, "the agent names the reason")
        assert "relay session up" not in wrong.log()
    finally:
        wrong.kill()
    right = AgentProcess(
        stack.work, "pinned-r1", [*base, "--relay-uri", "outrelay://acme/relay/r1"]
    )
    stack.agents.append(right)
    right.start()  # ready: the session with the pinned relay is up
    assert "relay session up" in right.log()
    right.stop()


@pytest.mark.parametrize(
    ("pin", "needle"),
    [
        (PROVIDER_URI, "has the agent role"),
        ("outrelay://ACME/relay/r1", "invalid tenant"),
        ("OUTRELAY://acme/relay/r1", "is not canonical; write 'outrelay://acme/relay/r1'"),
    ],
)
def test_relay_uri_must_be_a_canonical_relay_identity(stack: Stack, pin: str, needle: str) -> None:
    cert, key = stack.leaf("consumer")
    cmd = [sys.executable, "-m", "outrelay", "agent", "--relay", stack.relay_addr]
    cmd += ["--cert", str(cert), "--key", str(key), "--ca", str(stack.ca), "--relay-uri", pin]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(), timeout=30, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("Error:")]
    assert line.startswith("Error: --relay-uri: ") and needle in line


# -- the relay accepts only agents ------------------------------------------------


def test_relay_refuses_an_admin_certificate_before_serving_any_stream(stack: Stack) -> None:
    before = stack.metrics()
    admin_cert, admin_key = stack.pki / "admin-admin.crt", stack.pki / "admin-admin.key"

    async def main() -> str:
        assert stack.relay is not None
        with pytest.raises(HandshakeError) as info:
            await ProbeAgent.dial(stack.relay.quic, admin_cert, admin_key, stack.ca)
        return info.value.reason

    reason = run_async(main, 20)
    assert "expected an agent identity (outrelay://<tenant>/agent/<uuid>)" in reason
    assert "presented outrelay://acme/admin/admin (admin role)" in reason
    after = stack.metrics()
    # refused in the handshake: the relay core never saw the connection
    assert after["gauges"]["agents_connected"] == before["gauges"]["agents_connected"]
    for counter in ("connections_refused", "stream_opens"):
        assert after["counters"].get(counter, 0) == before["counters"].get(counter, 0), counter


# -- the CLI and the relay accept only the controller ------------------------------


class _Recorder(grpc.GenericRpcHandler):
    """Records every RPC that reaches the fake controller (and serves none)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> None:
        self.calls.append(handler_call_details.method)
        return None


@pytest.fixture(scope="module", params=["relay", "old-profile agent"])
def fake_controller(
    request: pytest.FixtureRequest, stack: Stack
) -> Iterator[tuple[str, _Recorder]]:
    """gRPC on 127.0.0.1 with a leaf valid for 127.0.0.1 and localhost, not the controller's."""
    if request.param == "relay":
        cert, key = stack.pki / "relay-r1.crt", stack.pki / "relay-r1.key"
    else:
        cert, key = old_profile_leaf(CA.load(stack.pki), PROVIDER_URI, stack.work, "fake-ctl")
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[recorder])
    creds = grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], stack.ca.read_bytes(), False
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield f"127.0.0.1:{port}", recorder
    finally:
        server.stop(None).wait(10)


def _one_line_failure(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stderr.splitlines() if x.strip() and not CORE_LOG.match(x)]
    lines = [x for x in lines if not x.startswith("warning:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_the_fake_controller_is_reachable_without_the_role_check(
    stack: Stack, fake_controller: tuple[str, _Recorder]
) -> None:
    """Control: its certificate *is* valid for 127.0.0.1 (what clients used to check)."""
    target, recorder = fake_controller
    cert, key = stack.pki / "admin-admin.crt", stack.pki / "admin-admin.key"
    creds = grpc.ssl_channel_credentials(stack.ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    with grpc.secure_channel(target, creds) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/outrelay.control.v1.Policy/ListPolicies")(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # TLS passed
    assert recorder.calls == ["/outrelay.control.v1.Policy/ListPolicies"]
    recorder.calls.clear()


@pytest.mark.parametrize("command", ["policy list", "pki token", "enroll"])
def test_cli_refuses_a_fake_controller(
    stack: Stack, fake_controller: tuple[str, _Recorder], command: str, tmp_path: Path
) -> None:
    target, recorder = fake_controller
    cert, key = stack.pki / "admin-admin.crt", stack.pki / "admin-admin.key"
    mtls = ["--cert", str(cert), "--key", str(key), "--ca", str(stack.ca)]
    args = {
        "policy list": ["policy", "list", "--controller", target, *mtls],
        "pki token": ["pki", "token", "--controller", target, "--tenant", "acme", *mtls],
        "enroll": [
            "enroll", "--controller", target, "--token", "x.y.z", "--tenant", "acme",
            "--ca", str(stack.ca), "--out", str(tmp_path / "enrolled"),
        ],
    }[command]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "outrelay", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    line = _one_line_failure(done)
    assert line.startswith("Error: ")
    assert "the server is not the controller: its certificate lacks the controller " in line
    assert f"role name DNS:{CONTROLLER_NAME}" in line
    assert recorder.calls == []  # no request reached it
    assert not (tmp_path / "enrolled").exists()


def test_relay_refuses_a_fake_controller(
    stack: Stack, fake_controller: tuple[str, _Recorder]
) -> None:
    target, recorder = fake_controller
    relay = RelayProcess(
        stack.work,
        cert=stack.pki / "relay-r1.crt",
        key=stack.pki / "relay-r1.key",
        ca=stack.ca,
        controller=target,
        args=["--relay-id", "r1", "--tenant", "acme"],
        name=f"relay-vs-fake-ctl-{int(time.monotonic() * 1000)}",
    )
    relay.spawn()
    try:
        # exits at once, or (waiting for its controller) keeps saying why
        relay.wait_log("the server is not the controller", timeout=30)
        assert not relay.addresses, "the relay must not get ready against a fake controller"
    finally:
        relay.kill()
    assert "Traceback" not in relay.log()
    assert recorder.calls == []


def test_real_controller_passes_the_role_check(stack: Stack) -> None:
    """The dev bundle's controller certificate carries the role name: the CLI works."""
    out = stack.cli("policy", "list", "-o", "json")
    assert out.strip().startswith("[")
