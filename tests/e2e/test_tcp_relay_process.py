"""``outrelay relay --listen-tcp``: the listener's start-up failures and its ready file."""

from __future__ import annotations

import socket
import time

import pytest

from outrelay.childproc import child_env
from outrelay.controller.testing import ControllerProcess
from outrelay.relay.testing import RelayProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _relay(ctl: ControllerProcess, *args: str) -> RelayProcess:
    pki = ctl.pki
    return RelayProcess(
        ctl.workdir,
        cert=pki / "relay-r1.crt",
        key=pki / "relay-r1.key",
        ca=pki / "ca.crt",
        controller=ctl.target,
        args=["--no-policy", *args],
        name=f"relay-{time.monotonic_ns()}",
    )


def test_listen_tcp_port_in_use_exits_1_with_one_line(ctl: ControllerProcess) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        relay = _relay(ctl, "--listen-tcp", f"127.0.0.1:{port}")
        try:
            relay.spawn()
            assert relay.proc is not None
            code = relay.proc.wait(30)
            assert code == 1
            log = relay.log()
            assert f"listen-tcp 127.0.0.1:{port}" in log and "Traceback" not in log
        finally:
            relay.kill()


def test_listen_tcp_malformed_exits_2(ctl: ControllerProcess) -> None:
    relay = _relay(ctl, "--listen-tcp", "nowhere")
    try:
        relay.spawn()
        assert relay.proc is not None
        assert relay.proc.wait(30) == 2
        assert "--listen-tcp: want HOST:PORT" in relay.log()
    finally:
        relay.kill()


def test_listen_tcp_from_environment_and_in_ready_file(ctl: ControllerProcess) -> None:
    relay = _relay(ctl)
    relay.env = {**child_env(), "OUTRELAY_RELAY_LISTEN_TCP": "127.0.0.1:0"}
    try:
        relay.start()
        host, port = relay.tcp
        assert host == "127.0.0.1" and port > 0
        with socket.create_connection((host, port), timeout=5):
            pass  # listening
        assert relay.stop() == 0
    finally:
        relay.kill()


def test_no_listen_tcp_means_no_tcp_listener(ctl: ControllerProcess) -> None:
    relay = _relay(ctl)
    try:
        relay.start()
        assert "tcp" not in relay.addresses
    finally:
        relay.kill()
