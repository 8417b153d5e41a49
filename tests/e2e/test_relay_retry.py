"""Address validation on a real relay process (issue 12, finding 4): Retry and the half-open cap.

A controller and a relay started with ``--retry always``, a provider agent
exposing an HTTP backend and a consumer agent, all real processes on
127.0.0.1: the agents (aioquic clients) follow the Retry transparently and a
GET goes through; crafted Initials from a plain UDP socket get a Retry each
and leave no connection behind (``quic_*`` metrics of ``/debug/metrics``).
A second relay with ``--retry never`` and a small ``--max-half-open`` (set
through ``OUTRELAY_RELAY_*`` variables) holds at most that many handshakes.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.packet import QuicPacketType

from outrelay.childproc import ComponentProcess, child_env
from outrelay.relay.testing import RelayProcess
from outrelay.transport.testing import client_initial, parse_header

from .conftest import Stack, debug_metrics, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BODY = b"hello through a validated address\n"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
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
def stack(tmp_path_factory: pytest.TempPathFactory, http_backend: str) -> Iterator[Stack]:
    """Controller + relay ``--retry always`` + provider (``web``) + consumer agents."""
    s = Stack(tmp_path_factory.mktemp("retry"))
    try:
        s.start(["--retry", "always"])
        s.policy_add("allow-all", "*", "allow")
        s.agent("provider", who="provider", expose={"web": http_backend})
        s.agent("consumer", who="consumer", consume=["web"])
        yield s
    finally:
        s.close()


def _get(stack: Stack) -> bytes:
    consumer = stack.agents[1]
    host, port = consumer.consume_addr("web")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{host}:{port}/", timeout=10) as resp:
        assert resp.status == 200
        body: bytes = resp.read()
        return body


def _quic(metrics: dict[str, Any], kind: str, name: str) -> int:
    return int(metrics[kind].get(name, 0))


def _metrics_when(proc: ComponentProcess, kind: str, name: str, at_least: int) -> dict[str, Any]:
    """The process's metrics once ``name`` reached ``at_least`` (10 s deadline)."""

    def check() -> dict[str, Any]:
        metrics = debug_metrics(proc)
        return metrics if _quic(metrics, kind, name) >= at_least else {}

    return wait_for(check, 10, f"{name} >= {at_least}")


def _send_spoofed(addr: tuple[str, int], n: int) -> list[bytes]:
    """Send ``n`` crafted Initials from one socket; every reply that came within 2 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for _ in range(n):
            sock.sendto(client_initial(addr)[0], addr)
        replies: list[bytes] = []
        deadline = time.monotonic() + 2.0
        while len(replies) < n and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                replies.append(sock.recv(65536))
            except TimeoutError:
                break
        return replies


def test_retry_always_relay_agents_connect_through_retry_and_get_works(stack: Stack) -> None:
    assert _get(stack) == BODY
    assert stack.relay is not None
    metrics = debug_metrics(stack.relay)
    # Each agent dialled once and was sent one Retry; its token was accepted.
    assert _quic(metrics, "counters", "quic_retries_sent") >= 2
    assert _quic(metrics, "counters", "quic_handshakes_started") >= 2
    assert _quic(metrics, "counters", "quic_invalid_tokens") == 0
    assert _quic(metrics, "gauges", "quic_half_open") == 0


def test_spoofed_initials_at_retry_always_relay_get_retry_and_leave_no_state(
    stack: Stack,
) -> None:
    assert stack.relay is not None
    before = debug_metrics(stack.relay)
    replies = _send_spoofed(stack.relay.quic, 50)
    assert len(replies) == 50
    assert {parse_header(r).packet_type for r in replies} == {QuicPacketType.RETRY}
    retries = _quic(before, "counters", "quic_retries_sent") + 50
    after = _metrics_when(stack.relay, "counters", "quic_retries_sent", retries)
    for kind, name in (
        ("counters", "quic_handshakes_started"),
        ("gauges", "quic_connections"),
        ("gauges", "quic_half_open"),
    ):
        assert _quic(after, kind, name) == _quic(before, kind, name), name
    assert _quic(after, "gauges", "quic_connections") == 2  # the two agents
    assert _get(stack) == BODY


def test_retry_never_relay_holds_at_most_max_half_open_handshakes(stack: Stack) -> None:
    cert, key = stack.ctl.leaf("outrelay://acme/relay/r2")
    relay = RelayProcess(
        stack.work,
        cert=cert,
        key=key,
        ca=stack.ca,
        controller=stack.ctl.target,
        args=["--relay-id", "r2", "--tenant", "acme"],
        name="relay-never",
    )
    relay.env = child_env() | {
        "OUTRELAY_RELAY_RETRY": "never",
        "OUTRELAY_RELAY_RETRY_THRESHOLD": "2",
        "OUTRELAY_RELAY_MAX_HALF_OPEN": "4",
    }
    relay.start()
    try:
        replies = _send_spoofed(relay.quic, 12)
        assert QuicPacketType.RETRY not in {parse_header(r).packet_type for r in replies}
        metrics = _metrics_when(relay, "counters", "quic_initials_dropped", 8)
        assert _quic(metrics, "counters", "quic_initials_dropped") == 8
        assert _quic(metrics, "counters", "quic_handshakes_started") == 4
        assert _quic(metrics, "gauges", "quic_half_open") == 4
        assert _quic(metrics, "counters", "quic_retries_sent") == 0
    finally:
        relay.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--retry", "sometimes"], "'sometimes' is not one of"),
        (["--max-half-open", "0"], "--max-half-open"),
        (["--retry-threshold", "100", "--max-half-open", "10"], "--retry-threshold"),
    ],
)
def test_bad_retry_settings_exit_2_with_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    cmd = [sys.executable, "-m", "outrelay", "relay", "--tenant", "acme"]
    cmd += ["--cert", "c", "--key", "k", "--ca", "a"]
    done = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=child_env(), timeout=30, check=False
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
