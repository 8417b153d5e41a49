"""Components on uvloop (``--loop uvloop``): real processes serve a GET end to end.

A controller, a relay and two agents (provider exposing an HTTP backend,
consumer listening for it), every one started with ``--loop uvloop``, all
real ``outrelay`` processes on 127.0.0.1. Each logs the loop it runs on;
a GET through the consumer's listener comes back intact; the relay stops
cleanly on SIGTERM (its signal handlers work on uvloop). Skipped when uvloop
is not installed (``pip install 'outrelay[fast]'``).
"""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from outrelay import loop as loops
from outrelay.controller.testing import ControllerProcess

from .conftest import Stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not loops.available(), reason="uvloop is not installed"),
]

BODY = b"hello over uvloop\n"
UVLOOP = ["--loop", "uvloop", "--log-level", "debug"]  # the loop is logged at debug level


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
    """Controller, relay, provider (``web``) and consumer, all on uvloop."""
    s = Stack(tmp_path_factory.mktemp("uvloop"))
    s.ctl = ControllerProcess(s.work, s.pki, args=UVLOOP)
    try:
        s.start(UVLOOP)
        s.policy_add("allow-all", "*", "allow")
        s.agent("provider", who="provider", expose={"web": http_backend}, args=UVLOOP)
        s.agent("consumer", who="consumer", consume=["web"], args=UVLOOP)
        yield s
    finally:
        s.close()


def _get(stack: Stack) -> bytes:
    host, port = stack.agents[1].consume_addr("web")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{host}:{port}/", timeout=10) as resp:
        assert resp.status == 200
        body: bytes = resp.read()
        return body


def test_uvloop_relay_agents_and_controller_serve_a_get_end_to_end(stack: Stack) -> None:
    for _ in range(20):
        assert _get(stack) == BODY
    assert stack.relay is not None
    for proc in (stack.ctl, stack.relay, *stack.agents):
        assert "loop=uvloop" in proc.log(), f"{proc.name}:\n{proc.log_tail(2000)}"


def test_uvloop_relay_stops_cleanly_on_sigterm(stack: Stack) -> None:
    assert stack.relay is not None
    assert stack.relay.stop() == 0
    assert "relay stopped" in stack.relay.log()
